"""`polydistill run` on every prompt layout the data reader yields (the tiny world's teachers as
`path:` checkpoints, a world student): chat `messages` with system turns and earlier turns, and
completion-style `text` rows read by a completion-model teacher beside a chat teacher.

Checks what only the wiring can get wrong: every layout trains and is scored per tag; what the
student stage read is the whole conversation (the signed lineage's prompt hash is that of the
conversations, not of their last user turns); a conversation for a completion model is a
one-line error naming the row and the teacher that writes nothing.
"""

import json
from pathlib import Path

import pytest
from fake_vllm import fake_vllm
from prompt_runs import prompt_run

from polydistill.data.records import Turn
from polydistill.store.manifest import prompts_hash
from polydistill.teachers.local import local_teacher

pytestmark = pytest.mark.slow
SYSTEM = "Answer with the result only."


def conversation(i: int, example, earlier) -> list[dict]:
    """Every third row one user turn, else a system turn, and every other row earlier turns."""
    turns = [{"role": "system", "content": SYSTEM}] if i % 3 else []
    if i % 2:
        turns += [
            {"role": "user", "content": earlier.prompt},
            {"role": "assistant", "content": earlier.answer},
        ]
    return [*turns, {"role": "user", "content": example.prompt}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_ok(cli, tmp_path, tiny_world, tiny_cache, data: dict, teachers: list[dict]) -> Path:
    """Run the config of `data` and `teachers` (each its own family) to `tmp_path / "run"`."""
    teachers = [{"family": t["name"], **t} for t in teachers]
    config = prompt_run(tiny_world, tiny_cache, teachers, data, tmp_path / "run.yaml")
    out = tmp_path / "run"
    result = cli("run", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {*(f"teacher:{t['name']}" for t in teachers), "student"}
    for scores in metrics["models"].values():
        assert set(scores["accuracy"]) == set(scores["bits_per_byte"]) == {"math", "text"}
    return out


@pytest.fixture
def chats(tmp_path, tiny_world) -> tuple[Path, Path]:
    """Train and test files of chat rows: system turns, earlier turns, one-turn rows; a test
    row's trailing assistant turn is its reference."""
    train, test = [], []
    for tag, domain in (("math", "arithmetic"), ("text", "strings")):
        examples, heldout = tiny_world.train[domain], tiny_world.heldout[domain]
        for i in range(4):
            train.append({"messages": conversation(i, examples[i], examples[i + 4]), "tag": tag})
        for i in range(2):
            answer = {"role": "assistant", "content": heldout[i].answer}
            turns = conversation(i, heldout[i], examples[i])
            test.append({"messages": [*turns, answer], "tag": tag})
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "test.jsonl", test)


def trained_prompts(path: Path) -> list:
    """The prompts the student stage asks, as `chat.record_prompt` makes them, tag by tag."""
    out = []
    for tag in ("math", "text"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["tag"] == tag:
                turns = tuple(Turn(t["role"], t["content"]) for t in row["messages"])
                out.append(turns if len(turns) > 1 else turns[0].content)
    return out


def test_a_run_trains_and_scores_on_conversations(cli, tmp_path, tiny_world, tiny_cache, chats):
    train, test = chats
    data = {"train": str(train), "test": str(test), "fractions": {"validation": 0.0}}
    out = run_ok(cli, tmp_path, tiny_world, tiny_cache, data, [{"name": "gemma"}, {"name": "qwen"}])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["data/kept/train"] == 8 and metrics["data"]["data/kept/test"] == 4
    accounts = json.loads((out / "contributions.json").read_text())
    assert len(accounts["examples"]) == 8
    lineage = json.loads((out / "student" / "lineage.json").read_text())
    asked = trained_prompts(train)
    assert sum(isinstance(p, tuple) for p in asked) == 6  # most rows are conversations
    last_turns = [p if isinstance(p, str) else p[-1].content for p in asked]
    assert json.dumps(lineage).count(prompts_hash(asked)) == 1
    assert prompts_hash(asked) != prompts_hash(last_turns)


def test_text_rows_train_a_completion_teacher_beside_a_chat_teacher(
    cli, tmp_path, tiny_world, tiny_cache
):
    """`text` rows: the completion-model teacher (`template: completion`) and the chat teacher
    both continue the text as it stands, as the student does; every model is scored on it."""
    files = {}
    for split, examples, count in (("train", tiny_world.train, 6), ("test", tiny_world.heldout, 2)):
        rows = [
            {"text": f"{e.prompt} {e.answer}", "tag": tag}
            for tag, domain in (("math", "arithmetic"), ("text", "strings"))
            for e in examples[domain][:count]
        ]
        files[split] = str(write_jsonl(tmp_path / f"{split}.jsonl", rows))
    # the prompt is every word but the answer ("reverse: abc" | " cba", "12+7=" | " 19")
    data = {**files, "fractions": {"validation": 0.0}, "text_split": {"fraction": 0.7}}
    teachers = [{"name": "gemma", "template": "completion"}, {"name": "qwen"}]
    out = run_ok(cli, tmp_path, tiny_world, tiny_cache, data, teachers)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["data/layout/text"] == 16
    lineage = json.loads((out / "student" / "lineage.json").read_text())
    assert "completion" in json.dumps(lineage)  # gemma's fingerprint: no chat template
    accounts = json.loads((out / "contributions.json").read_text())
    assert {e["domain"] for e in accounts["examples"]} == {"math", "text"}


def test_a_conversation_for_a_completion_teacher_is_one_line(
    cli, tmp_path, tiny_world, tiny_cache, chats
):
    train, test = chats
    data = {"train": str(train), "test": str(test), "fractions": {"validation": 0.0}}
    teachers = [{"name": "gemma", "family": "gemma", "template": "completion"}]
    teachers.append({"name": "qwen", "family": "qwen"})
    gemma_refuses_line_2(cli, tmp_path, tiny_world, tiny_cache, teachers, data, test)


def test_a_served_teacher_reads_every_row_with_its_local_tokenizer(
    cli, tmp_path, tiny_world, tiny_cache, chats
):
    """A served teacher's rows are rendered with its local tokenizer in the run's pre-check:
    the conversation its (completion) template cannot take is the same one line, naming the
    row, and no completion is asked of its server."""
    train, test = chats
    data = {"train": str(train), "test": str(test), "fractions": {"validation": 0.0}}
    gemma = local_teacher("gemma", tiny_world.teachers["gemma"], batch_size=8)
    with fake_vllm(gemma.model, gemma.tokenizer, model_id="gemma") as server:
        served = {"tokenizer": str(tiny_world.teachers["gemma"]), "urls": [server.base_url]}
        teachers = [{"name": "gemma", "family": "gemma", "template": "completion", "path": None,
                     "served": served}, {"name": "qwen", "family": "qwen"}]  # fmt: skip
        gemma_refuses_line_2(cli, tmp_path, tiny_world, tiny_cache, teachers, data, test)
    assert server.completion_calls == 0


def gemma_refuses_line_2(cli, tmp_path, tiny_world, tiny_cache, teachers, data, test) -> None:
    """The run stops before writing anything, on the one line naming teacher gemma and the
    conversation on line 2 of the test file."""
    config = prompt_run(tiny_world, tiny_cache, teachers, data, tmp_path / "run.yaml")
    out = tmp_path / "run"
    result = cli("run", str(config), "--out", str(out))
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: teacher 'gemma': {test} line 2 is a conversation (system+user+assistant+"
        "user), and the tokenizer has no chat template to render it; give the model one "
        "(`template:`) or ask it prompts of one user turn or text rows"
    )
