"""`student.heldout_every`: a held-out learning curve that measures and changes nothing.

A tiny-world run with the curve trains the same weights, bit for bit, as one without; its
last point is the final held-out evaluation (same weights, same scoring); a resumed run's
repeated points count once.
"""

import json
from pathlib import Path

import pytest
import tiny_student
from repo_paths import TINY

import polydistill.pipeline as pipeline
from polydistill.config import load_config
from polydistill.errors import UserError
from polydistill.student.curve import curve_hook, read_curve
from polydistill.world.inputs import world_inputs

STUDENT = {**tiny_student.STUDENT, "teachers": ["gemma", "qwen"]}
STUDENT["train"] = {**STUDENT["train"], "steps": 4}


def settings(tiny_cache: Path, every: int) -> list[str]:
    return [
        f"world.cache_dir={tiny_cache}",
        "threads=1",
        "eval.heldout_limit=4",
        f"student={json.dumps({**STUDENT, 'heldout_every': every})}",
    ]


def test_the_curve_changes_no_weight_and_ends_on_the_final_score(tiny_cache, tiny_world, tmp_path):
    runs = {}
    for every in (0, 2):
        cfg = load_config(TINY, settings(tiny_cache, every))
        out = tmp_path / f"every{every}"
        runs[every] = (out, pipeline.run(cfg, out, world_inputs(cfg))["models"]["student"])
    (plain_out, plain), (curve_out, curved) = runs[0], runs[2]
    weights = [(o / "student" / "model.safetensors").read_bytes() for o in (plain_out, curve_out)]
    assert weights[0] == weights[1]
    assert "curve" not in plain
    assert [p["step"] for p in curved["curve"]] == [2, 4]
    assert curved["curve"][-1]["accuracy"] == curved["accuracy"] == plain["accuracy"]
    assert all(p["seconds"] >= 0 for p in curved["curve"])
    times = [p["time"] for p in curved["curve"]]
    assert times == sorted(times) and times[-1] - times[0] >= sum(
        p["seconds"] for p in curved["curve"][1:]
    )


def test_curve_points_every_n_steps_and_a_resume_counts_once(tmp_path):
    log = tmp_path / "curve.jsonl"
    scores = iter([{"a": 0.1}, {"a": 0.2}, {"a": 0.25}])
    seen = []
    hook = curve_hook(lambda: next(scores), 2, log, then=lambda s, r: seen.append(s) or s == 4)
    assert [hook(step, {}) for step in (1, 2, 3, 4)] == [False, False, False, True]
    assert seen == [1, 2, 3, 4]
    hook(4, {})  # a resumed run scores step 4 again: the last point of a step stands
    assert [(p["step"], p["accuracy"]) for p in read_curve(log)] == [
        (2, {"a": 0.1}),
        (4, {"a": 0.25}),
    ]
    assert read_curve(tmp_path / "none.jsonl") == []
    with pytest.raises(ValueError, match="every must be ≥ 1"):
        curve_hook(dict, 0, log)


def test_no_curve_under_torchrun(tiny_cache):
    from polydistill.student.distributed import check_torchrun_run

    cfg = load_config(TINY, settings(tiny_cache, 2))
    with pytest.raises(UserError, match=r"student\.heldout_every is not supported under torchrun"):
        check_torchrun_run(cfg, 2)
