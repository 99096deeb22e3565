"""benchmarks/demo_budget.py end to end on the tiny world (two arms, four steps), and its
arithmetic: training seconds per step between curve points, the first step at the bar."""

import json
import subprocess
import sys

import pytest
from repo_paths import ROOT
from tiny_student import tiny_student_config


@pytest.fixture(scope="module")
def bench():
    from benchmarks import demo_budget

    return demo_budget


def point(step: int, seconds: float, time: float, **accuracy: float) -> dict:
    return {"step": step, "accuracy": accuracy, "seconds": seconds, "time": time}


def test_seconds_per_step_leave_out_the_scoring_and_the_bar_is_per_tag(bench):
    curve = [point(100, 5, 1000, a=0.1, b=0.5), point(200, 5, 1025, a=0.8, b=0.6),
             point(300, 7, 1052, a=0.95, b=0.7)]  # fmt: skip
    # 52 s between the first and last points, of which 12 s scoring: 40 s for 200 steps
    assert bench.seconds_per_step(curve) == pytest.approx(0.2)
    assert bench.seconds_per_step(curve[:1]) is None
    assert bench.first_step(curve, "a", 0.8) == 200
    assert bench.first_step(curve, "b", 0.9) is None
    teachers = {"teacher:p": {"a": 1.0, "b": 0.1}, "teacher:q": {"a": 0.2, "b": 0.8}}
    arm = {"arm": "x", "overrides": ["k=v"], "seconds": 90.0, "seconds_per_step": 0.2,
           "curve_seconds": 17.0, "curve": curve, "teachers": teachers}  # fmt: skip
    text = "\n".join(bench.arm_lines(arm, ["a", "b"]))
    assert "| 0.900 (p) | 0.720 (q) |" in text  # 90% of each tag's specialist
    assert "| 300 | **0.950** | 0.700 | 1.0 |" in text  # 300 steps x 0.2 s = 1.0 min
    assert "Not at 90% within 300 steps: b." in text
    arm["teachers"]["teacher:q"]["b"] = 0.7
    assert "At 90% on every tag from step 300: 1.0 min of training." in bench.arm_lines(
        arm, ["a", "b"]
    )


@pytest.mark.slow
def test_arms_train_with_their_overrides_and_score_a_curve(tmp_path, tiny_cache, tiny_world, bench):
    config = tiny_student_config(tiny_cache, tmp_path / "budget.yaml")
    out = tmp_path / "demo_budget.json"
    command = [sys.executable, "-m", "benchmarks.demo_budget", "--json", str(out)]
    command += ["--config", str(config), "--steps", "4", "--every", "2"]
    command += [
        "--arm",
        "few: student.prompts_per_tag=3",
        "--arm",
        "more: student.prompts_per_tag=6",
    ]
    command += ["--set", "threads=1", "--set", "eval.heldout_limit=3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tags"] == ["arithmetic", "facts", "strings"]
    assert [a["arm"] for a in result["arms"]] == ["few", "more"]
    few, more = result["arms"]
    assert few["overrides"] == ["student.prompts_per_tag=3"]
    # the overrides reached the runs, and so did the benchmark's own
    assert (few["prompts_per_tag"], more["prompts_per_tag"]) == (3, 6)
    assert few["steps"] == more["steps"] == 4
    for arm in result["arms"]:
        assert [p["step"] for p in arm["curve"]] == [2, 4]
        assert arm["curve"][-1]["accuracy"] == arm["accuracy"]
        assert arm["seconds_per_step"] > 0 and arm["seconds"] > arm["curve_seconds"]
    assert bench.markdown(result).startswith(bench.SECTION)
    assert "'--arm=few: student.prompts_per_tag=3'" in result["command"]
