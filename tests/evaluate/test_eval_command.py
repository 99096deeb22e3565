"""`polydistill eval CHECKPOINT_OR_RUN --data ...`: per-tag scores from a data file or a data
config, graders and lm-eval tasks in the JSON, and bad input as one line with exit code 2."""

import json
import shutil
import subprocess
import sys

import pytest
from lm_tasks import direct_mc_accuracy, multiple_choice_task

from polydistill.cli import main
from polydistill.data.records import Turn, make_record
from polydistill.evaluate import GradersConfig, evaluate_model, greedy_answers
from polydistill.evaluate.graders import NumericGrader

QUESTIONS = {
    "qa": [f"Who wrote book number {i}?" for i in range(4)],
    "math": [f"What is {i} times {i + 2}?" for i in range(4)],
}


@pytest.fixture
def cli(monkeypatch, capsys):
    def invoke(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["polydistill", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exit:
            code = exit.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="module")
def heldout(loaded, tmp_path_factory):
    """A JSONL of chat rows whose trailing assistant turn is the model's own answer for even
    rows (`qa`) and a wrong one for odd rows; `math` references are numbers the answers lack."""
    model, tokenizer = loaded
    asked = [
        make_record("test", "prompt", messages=(Turn("user", q),), tag=tag)
        for tag, questions in QUESTIONS.items()
        for q in questions
    ]
    answers = greedy_answers(model, tokenizer, asked, 5, 8, "model")
    rows, records = [], {}
    for i, (record, answer) in enumerate(zip(asked, answers, strict=True)):
        right = answer.strip() if i % 2 == 0 else f"{answer.strip()} wrong"
        reference = right if record.tag == "qa" else f"{i * 7}.0"
        question = record.messages[0].content
        rows.append({"messages": [{"role": "user", "content": question},
                                  {"role": "assistant", "content": reference}],
                     "tag": record.tag})  # fmt: skip
        records.setdefault(record.tag, []).append(
            make_record(
                "test", "prompt", messages=record.messages, reference=reference, tag=record.tag
            )
        )
    folder = tmp_path_factory.mktemp("heldout")
    (folder / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "heldout.jsonl", records


def test_eval_scores_a_checkpoint_per_tag_with_graders_and_lm_eval(
    cli,
    loaded,
    heldout,
    checkpoint,
    tmp_path,
    model64,
):
    data, records = heldout
    graders = tmp_path / "graders.yaml"
    graders.write_text("tags:\n  math: {kind: numeric, absolute: 0.5}\n")
    task = multiple_choice_task(tmp_path)
    out = tmp_path / "metrics.json"
    done = cli("eval", checkpoint, "--data", data, "--graders", graders, "--out", out,
               "--lm-eval-task", task, "--max-new-tokens", "5", "--batch-size", "3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["tags"] == ["math", "qa"] and result["examples"] == {"math": 4, "qa": 4}
    assert result["graders"] == {"math": "numeric", "qa": "exact"}
    model, tokenizer = loaded
    graders_config = GradersConfig(tags={"math": NumericGrader(absolute=0.5)})
    direct = evaluate_model(model, tokenizer, records, 5, 3, "m", graders=graders_config)
    assert result["accuracy"] == direct["accuracy"]
    assert result["accuracy"]["qa"] == 0.5
    assert result["bits_per_byte"] == pytest.approx(direct["bits_per_byte"])
    assert result["lm_eval"]["polydistill_tiny_mc"]["acc,none"] == pytest.approx(
        direct_mc_accuracy(model64, tokenizer)
    )
    assert "qa" in done.stdout and "50.0%" in done.stdout and "acc,none" in done.stdout

    # A run folder is scored through its student/; a data config by its split.
    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "student")
    config = tmp_path / "data.yaml"
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"prompt": "A training prompt.", "tag": "qa"}) + "\n")
    config.write_text(f"data:\n  train: {train}\n  test: {data}\n")
    again = cli("eval", run, "--data", config, "--split", "test", "--limit", "2",
                "--max-new-tokens", "5", "--out", tmp_path / "again.json")  # fmt: skip
    assert again.returncode == 0, again.stderr
    limited = json.loads((tmp_path / "again.json").read_text())
    assert limited["checkpoint"] == str(run / "student")
    assert limited["examples"] == {"math": 2, "qa": 2}


def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, checkpoint, heldout, tmp_path):
    data, _ = heldout
    unreferenced = tmp_path / "bare.jsonl"
    unreferenced.write_text(json.dumps({"prompt": "hi?"}) + "\n")
    bad_graders = tmp_path / "graders.yaml"
    bad_graders.write_text("default: {kind: regex, pattern: '('}\n")
    out = tmp_path / "metrics.json"
    cases = [
        ((tmp_path / "nowhere", "--data", data), "no such checkpoint or run folder"),
        ((tmp_path, "--data", data), "neither a checkpoint"),
        ((checkpoint, "--data", tmp_path / "none.jsonl"), "no such data file"),
        ((checkpoint, "--data", unreferenced), "have no reference answer"),
        ((checkpoint, "--data", data, "--graders", bad_graders), "bad regular expression"),
        ((checkpoint, "--data", data, "--split", "dev"), "--split 'dev' is not one of"),
        ((checkpoint, "--data", data, "--lm-eval-task", tmp_path / "t.yaml"), "no such file"),
    ]
    for args, message in cases:
        done = cli("eval", *args, "--out", out)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1
        assert not out.exists()


def test_prompts_longer_than_the_context_are_counted_not_scored(cli, checkpoint, tmp_path):
    rows = [{"prompt": "short question?", "reference": "yes"},
            {"prompt": "word " * 600, "reference": "no"}]  # fmt: skip
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "metrics.json"
    done = cli("eval", checkpoint, "--data", data, "--max-new-tokens", "3", "--out", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["examples"] == {"all": 1} and result["too_long"] == 1
    assert "1 prompts longer than the model's context" in done.stdout
