"""benchmarks/on_policy.py end to end on the tiny world (one seed, four steps), and its tables."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from repo_paths import ROOT
from tiny_student import tiny_student_config


@pytest.fixture(scope="module")
def bench():
    """The benchmark's names: its runs' (`on_policy`) and its section's (`on_policy_report`)."""
    from benchmarks import on_policy, on_policy_report

    return SimpleNamespace(**vars(on_policy_report), combine=on_policy.combine)


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_cache) -> Path:
    return tiny_student_config(tiny_cache, tmp_path_factory.mktemp("on-policy") / "on-policy.yaml")


@pytest.mark.slow
def test_three_arms_at_equal_steps_with_their_curves_and_costs(config, tiny_world, tmp_path, bench):
    out = tmp_path / "on_policy.json"
    command = [sys.executable, "-m", "benchmarks.on_policy", "--json", str(out)]
    command += ["--config", str(config), "--seeds", "3", "--steps", "4", "--switch", "2"]
    command += ["--every", "2", "--buffer-prompts", "4", "--set", "threads=1"]
    command += ["--set", "eval.heldout_limit=3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tags"] == ["arithmetic", "facts", "strings"] and result["seeds"] == [3]
    assert [r["arm"] for r in result["runs"]] == list(bench.ARMS)
    off, switched, mixed = result["runs"]
    for run in result["runs"]:
        assert [p["step"] for p in run["curve"]] == [2, 4]  # off → on: 2 steps, then 2 more
        assert run["curve"][-1]["accuracy"] == run["accuracy"]  # the last point is the final
        assert run["seed"] == 3 and run["seconds"] > 0
        assert set(run["teachers"]) == {"teacher:gemma", "teacher:gptoss", "teacher:qwen"}
    assert len(switched["run_seconds"]) == 2
    assert (off["on_policy_steps"], switched["on_policy_steps"], mixed["on_policy_steps"]) == (
        0, 2, 2
    )  # fmt: skip
    assert off["samples"] == off["refreshes"] == off["teacher_calls"] == 0
    for run in (switched, mixed):  # a fresh buffer of 4 samples at every on-policy step
        assert run["refreshes"] == 2 and run["samples"] == 8 and run["teacher_calls"] == 6
        assert run["graded_positions"] >= run["samples"]
    text = bench.markdown(result)
    assert text.startswith(bench.SECTION)
    assert text.count("\n| off-policy |") == text.count("\n| mixed |") == 3  # 3 tables
    assert "python -m benchmarks.on_policy --config " in text
    verdicts = text.count("\n- ") - text.count("\n- No run reaches")
    assert verdicts == 3  # which arm ends highest on each tag

    controls = [*command, "--arms", *bench.CONTROLS, "--add-to", str(out)]
    done = subprocess.run(controls, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    added = json.loads(out.read_text())
    assert added["runs"][:3] == result["runs"]
    restarted, routed = added["runs"][3:]
    assert (restarted["arm"], routed["arm"]) == bench.CONTROLS
    assert restarted["on_policy_steps"] == restarted["samples"] == 0  # mix 0: no sample drawn
    assert routed["on_policy_steps"] == 2 and routed["samples"] == 8
    assert [p["step"] for p in restarted["curve"]] == [2, 4]
    assert added["added"][0]["arms"] == list(bench.CONTROLS)
    text = bench.markdown(added)
    assert text.count("\n| off → off |") == 3 and "Controls, from the same first run" in text
    verdicts = text.count("\n- ") - text.count("\n- No run reaches")
    assert verdicts == 3 + 3  # the verdict on the three arms, then the controls'


def test_steps_to_the_target_read_from_the_curve(bench):
    curve = [{"step": s, "accuracy": {"a": a}} for s, a in ((50, 0.2), (100, 0.9), (150, 0.95))]
    assert bench.reached(curve, "a", 0.9) == 100
    assert bench.reached(curve, "a", 0.91) == 150
    assert bench.reached(curve, "a", 0.96) is bench.NOT_REACHED


def test_verdict_says_whether_the_seeds_separate_the_arms(bench):
    def run(arm, value):
        return {"arm": arm, "accuracy": {"a": value}}

    values = {"off-policy": (0.5, 0.6), "off → on": (0.7, 0.8), "mixed": (0.55, 0.75)}
    result = {"tags": ["a"], "runs": [run(arm, v) for arm, vs in values.items() for v in vs]}
    (line,) = bench.verdict(result)
    assert (
        line
        == "- a: *off → on* ends highest, +0.100 over *mixed* (within the spread of the seeds)."
    )
    values["mixed"] = (0.5, 0.6)
    result = {"tags": ["a"], "runs": [run(arm, v) for arm, vs in values.items() for v in vs]}
    assert "every seed of it above every seed of the next" in bench.verdict(result)[0]


def test_combine_adds_other_arms_of_the_same_settings_only(bench):
    def result(arms, steps=240):
        return {
            "config": "c.yaml", "seeds": [0], "settings": {"steps": steps}, "seconds": 10.0,
            "command": "python -m benchmarks.on_policy", "environment": {"date_utc": "now"},
            "runs": [{"arm": arm, "seed": 0} for arm in arms],
        }  # fmt: skip

    main, controls = result(bench.ARMS), result(bench.CONTROLS)
    both = bench.combine(main, controls)
    assert [r["arm"] for r in both["runs"]] == [*bench.ARMS, *bench.CONTROLS]
    assert both["seconds"] == 20.0 and both["added"][0]["arms"] == list(bench.CONTROLS)
    with pytest.raises(SystemExit, match="differ in settings"):
        bench.combine(main, result(bench.CONTROLS, steps=300))
    with pytest.raises(SystemExit, match="has runs of"):
        bench.combine(both, controls)


def test_the_controls_say_what_the_switch_owes_to_the_restart_and_the_grading(bench):
    values = {"off → on": (0.1, 0.2), "off → off": (0.7, 0.8), "off → on, routed": (0.15, 0.3)}
    runs = [{"arm": arm, "accuracy": {"a": v}} for arm, vs in values.items() for v in vs]
    (line,) = bench.controls_verdict({"tags": ["a"], "runs": runs})
    assert line == (
        "- a (off → on 0.150 · off → off 0.750 · off → on, routed 0.225): *off → off* ends "
        "above *off → on* on every seed; *off → on* and *off → on, routed* overlap across the "
        "seeds."
    )
    assert bench.controls_verdict({"tags": ["a"], "runs": runs[2:]}) == []


def test_a_line_when_no_run_reaches_its_target(bench):
    def run(accuracy):
        teachers = {"teacher:t": {"a": 1.0}}
        return {
            "arm": "off-policy",
            "teachers": teachers,
            "curve": [{"step": 4, "accuracy": {"a": accuracy}}],
        }

    result = {"tags": ["a"], "settings": {"steps": 4}, "runs": [run(0.5)]}
    assert bench.none_reached(result) == ["- No run reaches 95% of a specialist in 4 steps."]
    result["runs"].append(run(0.95))
    assert bench.none_reached(result) == []
