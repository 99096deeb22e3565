"""Integration: the tiny world and `polydistill run`, through the real CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polydistill.world.build import build_world

pytestmark = pytest.mark.slow
TINY = Path(__file__).parent / "tiny.yaml"


def test_world_teachers_are_standard_checkpoints(tiny_world):
    """A fresh process loads every teacher through the Auto classes, as users' code would."""
    code = (
        "import sys, json\n"
        "from transformers import AutoModelForCausalLM as M, AutoTokenizer as T\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    m, t = M.from_pretrained(p), T.from_pretrained(p)\n"
        "    out[p] = [type(m).__name__, bool(t.chat_template), t.is_fast]\n"
        "print(json.dumps(out))\n"
    )
    paths = {name: str(path) for name, path in tiny_world.teachers.items()}
    for path in paths.values():
        assert (Path(path) / "model.safetensors").is_file()
    result = subprocess.run(
        [sys.executable, "-c", code, *paths.values()],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded[paths["gemma"]] == ["Gemma3ForCausalLM", True, True]
    assert loaded[paths["gptoss"]] == ["GptOssForCausalLM", True, True]
    assert loaded[paths["qwen"]] == ["Qwen3ForCausalLM", True, True]


def test_world_is_cached_by_config(tiny_config, tiny_world):
    stamp = (tiny_world.root / "world.json").stat().st_mtime_ns
    again = build_world(tiny_config)
    assert again.root == tiny_world.root
    assert (again.root / "world.json").stat().st_mtime_ns == stamp
    changed = tiny_config.model_copy(deep=True)
    changed.world.seed = 2
    from polydistill.world.build import world_key

    assert world_key(changed) != world_key(tiny_config)


def test_world_record_lists_teachers(tiny_world):
    record = json.loads((tiny_world.root / "world.json").read_text())
    assert {t["name"] for t in record["teachers"]} == {"gemma", "gptoss", "qwen"}
    for summary in record["teachers"]:
        assert summary["params"] > 0 and summary["steps"] >= 1
    for style in ("gemma", "qwen", "gpt-oss", "student"):
        assert (tiny_world.tokenizer_dir(style) / "tokenizer.json").is_file()


def test_run_writes_metrics_and_replaces_them_only_with_force(cli, tmp_path, tiny_cache):
    out = tmp_path / "run"
    result = cli("run", str(TINY), "--out", str(out), f"world.cache_dir={tiny_cache}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["domains"] == ["arithmetic", "facts", "strings"]
    assert set(metrics["models"]) == {"teacher:gemma", "teacher:gptoss", "teacher:qwen"}
    for scores in metrics["models"].values():
        assert set(scores["accuracy"]) == set(metrics["domains"])
        assert all(0 <= a <= 1 for a in scores["accuracy"].values())
        assert all(b > 0 for b in scores["bits_per_byte"].values())
        assert scores["params"] > 0
    assert (out / "config.yaml").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    again = cli("run", str(TINY), "--out", str(out), f"world.cache_dir={tiny_cache}")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: output folder {out} already exists and is not empty; pass --force to replace it"
    ]

    (out / "stale.txt").write_text("from the run before")
    args = ["--out", str(out), "--force", f"world.cache_dir={tiny_cache}", "eval.heldout_limit=1"]
    forced = cli("run", str(TINY), *args)
    assert forced.returncode == 0, forced.stderr
    assert not (out / "stale.txt").exists()  # replaced whole, not merged
    assert "heldout_limit: 1" in (out / "config.yaml").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_run_with_a_real_checkpoint_path(cli, tmp_path, tiny_world, tiny_cache):
    """A teacher given by `path` is evaluated like the world's own; the world is reused. A
    checkpoint whose files say no licence is refused before anything is loaded, until the
    config declares one."""
    import yaml

    raw = yaml.safe_load(TINY.read_text())
    raw["teachers"].append(
        {"name": "local", "family": "qwen", "path": str(tiny_world.teachers["qwen"])}
    )
    config = tmp_path / "with-local.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    args = ["--out", str(out), f"world.cache_dir={tiny_cache}", "eval.heldout_limit=2"]
    refused = cli("run", str(config), *args)
    assert refused.returncode == 2 and not out.exists()
    assert refused.stderr.strip().splitlines() == [
        f"error: teacher 'local': cannot determine the licence of {tiny_world.teachers['qwen']}; "
        "declare it in teachers[].licence.id (known: apache-2.0, mit, gemma, llama3.1, qwen, "
        "qwen-research, cc-by-nc-4.0)"
    ]
    result = cli("run", str(config), *args, "teachers[3].licence={id: apache-2.0}")
    assert result.returncode == 0, result.stderr
    models = json.loads((out / "metrics.json").read_text())["models"]
    assert models["teacher:local"] == models["teacher:qwen"]  # the same checkpoint, read by path
    assert "reusing world" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["teachers[1].path=/nonexistent"],
            "error: teachers[1].path: no such directory: /nonexistent",
        ),
        (["eval.batch_size=-1"], "error: eval.batch_size: Input should be greater than 0"),
        (
            ["world.domains.arithmetic.max_digits=1", "world.domains.arithmetic.train=9000"],
            "error: world: the domain's problem space is too small",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, tiny_cache, args, message):
    out = tmp_path / "run"
    result = cli("run", str(TINY), "--out", str(out), f"world.cache_dir={tiny_cache}", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_teacher_that_is_not_a_checkpoint(cli, tmp_path, tiny_cache):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    result = cli(
        "run",
        str(TINY),
        "--out",
        str(tmp_path / "run"),
        f"world.cache_dir={tiny_cache}",
        f"teachers[0].path={fake}",
        "teachers[0].licence={id: gemma}",  # past the policy gate, to the tokenizer check
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: teacher 'gemma': cannot load the tokenizer")
    assert not (tmp_path / "run").exists()


def test_world_build_command_copies_the_world(cli, tmp_path, tiny_cache, tiny_world):
    out = tmp_path / "world"
    result = cli("world", "build", str(TINY), "--out", str(out), f"world.cache_dir={tiny_cache}")
    assert result.returncode == 0, result.stderr
    assert (out / "world.json").is_file() and (out / "teachers" / "qwen" / "config.json").is_file()


def test_a_terminated_run_leaves_nothing_behind(tmp_path, tiny_cache, tiny_world):
    """SIGTERM mid-run unwinds the staging folders: no output, no hidden leftovers."""
    import signal
    import time

    out = tmp_path / "run"
    args = ["run", str(TINY), "--out", str(out), f"world.cache_dir={tiny_cache}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "polydistill", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 60
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".")]:
        assert time.monotonic() < deadline and process.poll() is None, "no staging folder appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
