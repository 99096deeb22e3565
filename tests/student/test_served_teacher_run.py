"""`polydistill run` with a served teacher beside a checkpoint teacher: the served one answers and
scores the student's prompts over HTTP (a vLLM stand-in serving the tiny world's qwen), the
run's pre-check renders its rows with its local tokenizer, and the student is distilled from
both. The served teacher is read, not evaluated (its server is not ours to score). Its context is
the one its server states: a prompt longer is dropped for it before any model loads."""

import json
from pathlib import Path

import pytest
from fake_vllm import fake_vllm
from prompt_runs import prompt_run

from polydistill.teachers.local import local_teacher

pytestmark = pytest.mark.slow


# A served context of 38 tokens leaves qwen 30 for a prompt (eval.max_new_tokens is 8): the
# tiny world's rendered prompts take at most 15 tokens, eight strings prompts in one 40–48.
SERVED_CONTEXT = 38


def prompt_rows(tiny_world, path: Path) -> Path:
    """Six prompts of two tags, and one too long for the served context (none other's)."""
    rows = [
        {"prompt": e.prompt, "reference": e.answer, "tag": tag}
        for tag, domain in (("math", "arithmetic"), ("text", "strings"))
        for e in tiny_world.train[domain][:6]
    ]
    long = tiny_world.train["strings"][0]
    rows.append({"prompt": " ".join([long.prompt] * 8), "reference": long.answer, "tag": "text"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_run_distils_from_a_served_teacher(cli, tmp_path, tiny_world, tiny_cache):
    qwen = local_teacher("qwen", tiny_world.teachers["qwen"], batch_size=8)
    with fake_vllm(qwen.model, qwen.tokenizer, model_id="qwen") as server:
        server.max_model_len = SERVED_CONTEXT
        served = {"tokenizer": str(tiny_world.teachers["qwen"]), "urls": [server.base_url]}
        teachers = [{"name": "gemma", "family": "gemma"},
                    {"name": "qwen", "family": "qwen", "path": None, "served": served}]  # fmt: skip
        data = {"train": str(prompt_rows(tiny_world, tmp_path / "prompts.jsonl")),
                "fractions": {"validation": 0.0, "test": 0.25}}  # fmt: skip
        config = prompt_run(tiny_world, tiny_cache, teachers, data, tmp_path / "run.yaml")
        out = tmp_path / "run"
        result = cli("run", str(config), "--out", str(out))
        calls = server.completion_calls
    assert result.returncode == 0, result.stderr
    assert calls > 0  # the served teacher answered and scored over HTTP
    metrics = json.loads((out / "metrics.json").read_text())
    too_long = {k: n for k, n in metrics["data"].items() if k.startswith("data/too_long_for/")}
    assert too_long == {"data/too_long_for/qwen": 1}  # its server's context, asked in pre-check
    assert set(metrics["models"]) == {"teacher:gemma", "student"}  # qwen is read, not scored
    assert set(metrics["models"]["student"]["accuracy"]) == {"math", "text"}
    accounts = json.loads((out / "contributions.json").read_text())
    assert accounts["teachers"] == ["gemma", "qwen"]
    # the evidence router hears the arithmetic specialist on arithmetic, over HTTP or not
    assert accounts["mass"]["math"]["qwen"] > 0.5 and accounts["share"]["qwen"] > 0
    lineage = json.loads((out / "student" / "lineage.json").read_text())
    assert "qwen" in json.dumps(lineage)
