"""benchmarks/RESULTS.md is what the committed JSON renders to, and every module renders its own."""

import importlib
import json
import subprocess
import sys

import pytest
from repo_paths import ROOT

RESULTS_DIR = ROOT / "benchmarks" / "results"
COMMITTED = sorted(RESULTS_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def results_md():
    # the repository root is on the import path: tests/benchmarks/conftest.py
    from benchmarks import results_md

    return results_md


def test_results_md_is_up_to_date_with_the_committed_json():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.results_md", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_there_is_committed_json():
    assert len(COMMITTED) >= 3, f"only {[p.name for p in COMMITTED]} in {RESULTS_DIR}"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_each_module_renders_its_committed_json(path, results_md):
    assert path.stem in results_md.MODULES
    result = json.loads(path.read_text())
    module = importlib.import_module(f"benchmarks.{path.stem}")
    text = module.markdown(result)
    heading = text.splitlines()[0]
    assert heading.startswith("## ") and heading.endswith(f"(benchmarks/{path.stem}.py)")
    assert results_md.environment_lines(result) in text
    assert f"Command: `{result['command']}`" in text
    assert result["command"].startswith(f"python -m benchmarks.{path.stem}")
    assert "| " in text  # a table of figures, not only prose


def test_a_stale_results_md_is_caught(results_md, tmp_path, monkeypatch):
    stale = tmp_path / "RESULTS.md"
    stale.write_text(results_md.render() + "\nA figure typed by hand: 42x faster.\n")
    monkeypatch.setattr(results_md, "RESULTS", stale)
    assert results_md.main(["--check"]) == 1
    assert results_md.main([]) == 0 and results_md.main(["--check"]) == 0
    assert "typed by hand" not in stale.read_text()


def test_load_sentence_reads_the_load_at_the_start_and_the_end(results_md):
    def at(start: float, end: float | None = None) -> str:
        env = {"load_start": [start, 0.0, 0.0], "cores_usable": 2}
        if end is not None:
            env["load_end"] = [0.0, 0.0, end]
        return results_md.load_sentence({"environment": env})

    assert at(3.1).startswith("Other work shared the 2 cores (1-minute load average 3.1 ")
    assert at(0.2).startswith("The machine was nearly idle when this run started")
    assert at(0.2, 1.9).startswith("The machine was nearly idle (1-minute load average 0.2")
    busy = at(0.2, 7.3)  # more runnable work than the run's own 2 cores
    assert busy.startswith("Other work shared") and "15-minute load average 7.3 at the end" in busy


def test_demo_section_reads_the_run_and_its_metrics(results_md):
    from benchmarks import demo

    env = results_md.environment()
    metrics = {"domains": ["arithmetic", "facts"], "models": {}}
    metrics["models"]["student"] = {"accuracy": {"arithmetic": 0.5, "facts": 0.875}, "params": 1234}
    result = {"command": "python -m benchmarks.demo", "environment": env, "reuse_world": False}
    result |= {"config": "examples/specialists.yaml", "seconds": 484.2, "returncode": 0}
    text = demo.markdown(result | {"metrics": metrics})
    assert text.startswith(demo.SECTION) and "world built from scratch: **8 min 4 s**" in text
    assert "| student | 0.500 | 0.875 | 1,234 |" in text
    failed = demo.markdown(result | {"metrics": None, "returncode": 1})
    assert "The run failed (exit 1) after 8 min 4 s." in failed
