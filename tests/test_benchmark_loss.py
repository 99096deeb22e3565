"""benchmarks/loss.py end to end at a tiny size, and its RESULTS.md section handling."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_loss_benchmark_runs_each_case_in_its_own_process(tmp_path):
    out = tmp_path / "loss.json"
    command = [sys.executable, "-m", "benchmarks.loss", "--json", str(out), "--sizes", "600:16"]
    command += ["--impls", "polydistill_chunked", "dense_reference", "float64_reference"]
    command += ["--no-results-md", "--rounds", "2"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    records = json.loads(out.read_text())
    impls = ["polydistill_chunked", "dense_reference", "float64_reference"]
    assert [r["impl"] for r in records] == impls
    for record in records:
        assert record["status"] == "ok" and record["ms"] > 0 and record["peak_mb"] is not None
        assert record["repeats"] > 3  # timed again in the second round
        assert {"impl", "vocab", "tokens", "peak_mb", "ms", "rel_err_vs_dense"} <= record.keys()
    chunked, dense, _ = records
    assert chunked["rel_err_vs_dense"] < 1e-5 and chunked["grad_rel_err_vs_dense"] < 1e-4
    assert chunked["rel_err_vs_float64"] < 1e-5 and chunked["grad_rel_err_vs_float64"] < 1e-4
    assert dense["rel_err_vs_float64"] < 1e-5


def test_results_section_replaces_only_its_own(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import loss

    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other (x.py)\n\nkeep me\n")
    monkeypatch.setattr(loss, "RESULTS", results)
    record = {"impl": "floor", "vocab": 10, "tokens": 2, "status": "ok", "peak_mb": 1.0}
    record |= {"ms": 5.0, "repeats": 1, "grads_mb": 0.1}
    loss.write_results(loss.markdown([record], "python -m benchmarks.loss --quick"))
    loss.write_results(loss.markdown([record | {"ms": 7.0}], "python -m benchmarks.loss --quick"))
    text = results.read_text()
    assert text.count(loss.SECTION) == 1 and "keep me" in text
    assert "| 10 | 2 | floor | ok | 1 | 0.1 | 7 | 1 |" in text


def test_rows_not_re_run_are_kept_with_the_date_of_their_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import loss

    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(loss, "RESULTS", results)
    record = {"impl": "floor", "vocab": 10, "tokens": 2, "status": "ok", "peak_mb": 1.0}
    record |= {"ms": 5.0, "repeats": 1, "grads_mb": 0.1}
    first = [record, record | {"impl": "polydistill_chunked", "ms": 8.0}, record | {"tokens": 4}]
    loss.write_results(loss.markdown(first, "first"))
    first_date = re.search(r"^Date: (.+?)\s*$", results.read_text(), re.MULTILINE).group(1)
    second = [record | {"ms": 6.0}]  # re-runs only the floor at 10 x 2
    kept = loss.kept_rows(loss.current_section(), second)
    loss.write_results(loss.markdown(second, "second", kept))
    text = results.read_text()
    assert "| 10 | 2 | floor | ok | 1 | 0.1 | 6 | 1 |" in text
    assert "| 10 | 2 | floor | ok | 1 | 0.1 | 5 |" not in text  # replaced
    assert (
        f"| 10 | 2 | polydistill_chunked | ok | 1 | 0.1 | 8 | 1 | – | – | – | – | {first_date} |"
        in text
    )
    assert f"| 10 | 4 | floor | ok | 1 | 0.1 | 5 | 1 | – | – | – | – | {first_date} |" in text
    assert f"| 10 | 2 | – | – | 1.600 | – | – | – | {first_date} |" in text  # chunked not re-run
    # A third run keeps the first run's rows with the first run's date.
    third = [record | {"tokens": 4, "ms": 4.0}]
    loss.write_results(loss.markdown(third, "third", loss.kept_rows(loss.current_section(), third)))
    text = results.read_text()
    assert text.count(first_date) >= 2 and "| 10 | 4 | floor | ok | 1 | 0.1 | 4 | 1 |" in text
    assert (
        f"| 10 | 2 | polydistill_chunked | ok | 1 | 0.1 | 8 | 1 | – | – | – | – | {first_date} |"
        in text
    )
