"""lm-evaluation-harness tasks from local YAML + JSONL on a loaded model, offline, scored as a
direct float64 computation with the same model scores them."""

import pytest
from lm_tasks import (
    CONTEXTS,
    direct_continuation,
    direct_mc_accuracy,
    multiple_choice_task,
    write_task,
)

from polydistill.errors import UserError
from polydistill.evaluate.lm_harness import lm_eval_scores, task_name


def test_multiple_choice_and_generation_tasks_score_as_direct_computation(
    loaded, model64, tmp_path
):
    model, tokenizer = loaded
    continuations = [direct_continuation(model64, tokenizer, c, 4) for c in CONTEXTS]
    rows = [
        {"context": c, "target": t if i % 2 == 0 else f"{t} wrong"}
        for i, (c, t) in enumerate(zip(CONTEXTS, continuations, strict=True))
    ]
    generation = write_task(
        tmp_path, "polydistill_tiny_gen", rows,
        "output_type: generate_until\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n",
    )  # fmt: skip
    assert len(set(continuations)) > 3  # distinct answers: a mix-up of rows would show
    mc = multiple_choice_task(tmp_path)
    scores = lm_eval_scores(model, tokenizer, [mc, generation], batch_size=4)
    assert scores["polydistill_tiny_mc"]["acc,none"] == pytest.approx(
        direct_mc_accuracy(model64, tokenizer)
    )
    assert scores["polydistill_tiny_gen"]["exact_match,none"] == pytest.approx(0.5)
    assert not any("stderr" in metric for task in scores.values() for metric in task)


def test_a_bad_task_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        task_name(tmp_path / "missing.yaml")
    (tmp_path / "nameless.yaml").write_text("dataset_path: json\n")
    with pytest.raises(UserError, match="no `task:` name"):
        task_name(tmp_path / "nameless.yaml")
    (tmp_path / "fn.yaml").write_text("task: t\nprocess_docs: !function utils.process\n")
    assert task_name(tmp_path / "fn.yaml") == "t"
