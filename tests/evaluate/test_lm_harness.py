"""lm-evaluation-harness tasks from local YAML + JSONL on a loaded model, offline, scored as a
direct float64 computation with the same model scores them."""

import json
from pathlib import Path

import pytest
import torch

from polydistill.errors import UserError
from polydistill.evaluate.lm_harness import lm_eval_scores, task_name

QUESTIONS = [
    {"question": f"Question {i}: which word follows {w}?", "choices": c, "answer": i % len(c)}
    for i, (w, c) in enumerate(
        [("red", ["apple", "sky", "grass"]), ("one", ["two", "ten"]), ("cat", ["dog", "mouse"]),
         ("sun", ["moon", "star", "sea"]), ("def", ["return", "class"]), ("up", ["down", "left"])]
    )
]  # fmt: skip
CONTEXTS = [f"print(value_{i}) #" for i in range(6)]


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def write_task(folder: Path, name: str, rows: list[dict], body: str) -> Path:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = folder / f"{name}.yaml"
    path.write_text(
        f"task: {name}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n{body}"
    )
    return path


def multiple_choice_task(folder: Path) -> Path:
    body = (
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    return write_task(folder, "polydistill_tiny_mc", QUESTIONS, body)


def direct_mc_accuracy(model64, tokenizer) -> float:
    """Accuracy of argmax over choices of log P(" " + choice | question), in float64."""
    correct = 0
    for row in QUESTIONS:
        context = encode(tokenizer, row["question"])
        scores = []
        for choice in row["choices"]:
            whole = encode(tokenizer, f"{row['question']} {choice}")
            with torch.no_grad():
                logprobs = model64(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(
                sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context), len(whole)))
            )
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return correct / len(QUESTIONS)


def direct_continuation(model64, tokenizer, context: str, tokens: int) -> str:
    ids, new = encode(tokenizer, context), []
    with torch.no_grad():
        for _ in range(tokens):
            token = int(model64(torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).split("\n")[0]


@pytest.fixture(scope="module")
def model64(loaded):
    import copy

    return copy.deepcopy(loaded[0]).double()


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
