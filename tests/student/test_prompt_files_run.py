"""`polydistill run` on the user's own prompt file: a JSONL of prompt / reference / tag rows,
teachers given as `path:` checkpoints (the tiny world's, built beforehand), no world prompts.

Checks what only the wiring can get wrong: the data summary's counts (read, dropped as empty,
duplicate or too long for a model's context, kept per split) land in `metrics.json`; every
model is scored per tag of the test file; the student learns only from train-split prompts; a
tag the config names that no training prompt has is a one-line error that writes nothing.
"""

import json
from pathlib import Path

import pytest
from prompt_runs import prompt_run

pytestmark = pytest.mark.slow


def rows_of(examples, tag: str) -> list[dict]:
    return [{"prompt": e.prompt, "reference": e.answer, "tag": tag} for e in examples]


@pytest.fixture
def prompt_config(tmp_path, tiny_world, tiny_cache) -> Path:
    """Train and test files of two tags from the tiny world's examples, with one empty row, one
    duplicate and one prompt longer than every model's context in the train file."""
    train = rows_of(tiny_world.train["arithmetic"][:6], "math")
    train += rows_of(tiny_world.train["strings"][:6], "text")
    train += [train[0], {"prompt": "  ", "tag": "math"}]
    train.append({"prompt": " ".join(["word"] * 400), "tag": "text"})
    test = rows_of(tiny_world.heldout["arithmetic"][:3], "math")
    test += rows_of(tiny_world.heldout["strings"][:2], "text")
    for name, rows in (("train", train), ("test", test)):
        with (tmp_path / f"{name}.jsonl").open("w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    teachers = [{"name": "gemma", "family": "gemma"}, {"name": "qwen", "family": "qwen"}]
    data = {
        "train": str(tmp_path / "train.jsonl"),
        "test": str(tmp_path / "test.jsonl"),
        "fractions": {"validation": 0.0},
    }
    return prompt_run(tiny_world, tiny_cache, teachers, data, tmp_path / "mine.yaml")


def test_a_run_on_a_jsonl_prompt_file_scores_per_tag_and_counts_the_data(
    cli, tmp_path, prompt_config
):
    out = tmp_path / "run"
    result = cli("run", str(prompt_config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["domains"] == ["math", "text"]
    assert set(metrics["models"]) == {"teacher:gemma", "teacher:qwen", "student"}
    for scores in metrics["models"].values():
        assert set(scores["accuracy"]) == set(scores["bits_per_byte"]) == {"math", "text"}
    data = metrics["data"]
    assert data["data/rows"] == 5 + 15
    assert (data["data/empty"], data["data/duplicates"], data["data/too_long"]) == (1, 1, 1)
    assert data["data/too_long_for/student"] == 1 and data["data/too_long_for/gemma"] == 1
    assert (data["data/kept/train"], data["data/kept/test"]) == (12, 5)
    accounts = json.loads((out / "contributions.json").read_text())
    assert set(accounts["mass"]) == {"math", "text"}
    assert len(accounts["examples"]) == 8  # 4 per tag, train prompts only
    assert json.loads((out / "inputs.json").read_text())["world"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "student.prompts_per_tag={poetry: 3}",
            "student.prompts_per_tag: no training prompts tagged ['poetry'] (tags: math, text)",
        ),
        (
            "student.fusion={strategy: route, routes: {math: qwen}}",
            "student.fusion.routes: no teacher for tag(s) ['text']",
        ),
        (
            "student.curriculum={first: [prose], steps: 1}",
            "student.curriculum.first: no training prompts tagged ['prose'] (tags: math, text)",
        ),
        (
            "student.fusion={strategy: route, routes: {math: qwen, text: nobody}}",
            "student.fusion.routes: unknown teacher(s) ['nobody']",
        ),
    ],
)
def test_a_tag_the_prompts_do_not_have_is_one_line(cli, tmp_path, prompt_config, override, message):
    """Tags are free strings, checked against the training prompts once they are read."""
    out = tmp_path / "run"
    result = cli("run", str(prompt_config), "--out", str(out), override)
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip().splitlines()[-1] == f"error: {message}"


def mc_task(folder: Path) -> Path:
    """A four-question multiple-choice lm-eval task on local data."""
    rows = [
        {"question": f"{a}+{b}=", "choices": [str(a + b), str(a + b + 1)], "answer": 0}
        for a, b in ((1, 2), (3, 4), (5, 1), (2, 2))
    ]
    data = folder / "mc.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = folder / "mc.yaml"
    task.write_text(
        f"task: polydistill_run_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    return task


def test_the_runs_graders_and_lm_eval_tasks_score_every_model(cli, tmp_path, prompt_config):
    """`eval.graders` grades every model's held-out answers (here `text` by a regex that takes
    nothing from either side: every answer passes, so its accuracy is 1 whatever the model says);
    `eval.lm_eval_tasks` run on the trained student into its `lm_eval` metrics."""
    graders = tmp_path / "graders.yaml"
    graders.write_text("tags:\n  text: {kind: regex, pattern: '^', reference: true}\n")
    task = mc_task(tmp_path)
    out = tmp_path / "run"
    overrides = [f"eval.graders={graders}", f"eval.lm_eval_tasks=[{task}]"]
    result = cli("run", str(prompt_config), "--out", str(out), *overrides)
    assert result.returncode == 0, result.stderr
    models = json.loads((out / "metrics.json").read_text())["models"]
    assert all(scores["accuracy"]["text"] == 1.0 for scores in models.values())
    assert any(scores["accuracy"]["math"] < 1.0 for scores in models.values())  # exact match
    (scores,) = models["student"]["lm_eval"].values()
    assert 0.0 <= scores["acc,none"] <= 1.0
    assert "lm_eval" not in models["teacher:gemma"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("tags:\n  text: {kind: psychic}\n")
    refused = cli("run", str(prompt_config), "--out", str(tmp_path / "x"), f"eval.graders={bad}")
    assert refused.returncode == 2 and not (tmp_path / "x").exists()
    assert refused.stderr.strip().splitlines()[-1].startswith(f"error: graders {bad}")
