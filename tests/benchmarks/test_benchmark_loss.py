"""benchmarks/loss.py end to end at a tiny size, and the observations its section computes."""

import json
import subprocess
import sys

import pytest
from repo_paths import ROOT


@pytest.fixture(scope="module")
def loss():
    # the repository root is on the import path: tests/benchmarks/conftest.py
    from benchmarks import loss

    return loss


@pytest.mark.slow
def test_loss_benchmark_runs_each_case_in_its_own_process(tmp_path, loss):
    out = tmp_path / "loss.json"
    command = [sys.executable, "-m", "benchmarks.loss", "--json", str(out), "--sizes", "600:16"]
    command += ["--impls", "polydistill_chunked", "dense_reference", "float64_reference"]
    command += ["--rounds", "2"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["command"] == "python -m benchmarks.loss " + " ".join(command[3:])
    assert result["environment"]["versions"]["torch"] and result["environment"]["load_end"]
    records = result["records"]
    impls = ["polydistill_chunked", "dense_reference", "float64_reference"]
    assert [r["impl"] for r in records] == impls
    for record in records:
        assert record["status"] == "ok" and record["ms"] > 0 and record["peak_mb"] is not None
        assert record["repeats"] > 3  # timed again in the second round
        assert {"impl", "vocab", "tokens", "peak_mb", "ms", "rel_err_vs_dense"} <= record.keys()
    chunked, dense, f64 = records
    assert chunked["rel_err_vs_dense"] < 1e-5 and chunked["grad_rel_err_vs_dense"] < 1e-4
    assert chunked["rel_err_vs_float64"] < 1e-5 and chunked["grad_rel_err_vs_float64"] < 1e-4
    assert dense["rel_err_vs_float64"] < 1e-5
    # The compiled kernel ran every call of the chunked case; the float64 reference is eager.
    assert chunked["kernel_calls"]["eager"] == 0 and chunked["kernel_calls"]["compiled"] > 0
    assert f64["kernel_calls"]["compiled"] == 0
    text = loss.markdown(result)
    assert text.startswith(loss.SECTION) and "ran the compiled full-vocabulary kernel" in text


def test_kernel_line_reports_a_compile_fallback(loss):
    record = {"impl": "polydistill_chunked", "vocab": 10, "tokens": 2, "status": "ok"}
    compiled = record | {"kernel_calls": {"compiled": 3, "eager": 0}, "compile_error": None}
    fell_back = record | {"kernel_calls": {"compiled": 0, "eager": 3}}
    fell_back["compile_error"] = "CppCompileError: no g++"
    assert "compiled full-vocabulary kernel in all 3" in loss.kernel_line([compiled])
    line = loss.kernel_line([compiled, fell_back | {"vocab": 20}])
    assert "eager kernel (compile fell back) at 20 x 2: CppCompileError: no g++" in line
    assert "No polydistill_chunked case" in loss.kernel_line([record | {"impl": "floor"}])
