"""A model's held-out learning curve while it trains (`student.heldout_every`).

    on_step = curve_hook(lambda: exact_match(model, ...), every=100, log=work / CURVE_LOG)
    train(..., on_step=on_step)
    result["curve"] = read_curve(work / CURVE_LOG)   # [{"step": 100, "accuracy": {...}}, ...]

Every `every` steps the hook scores the weights being trained (the raw weights, as every
`on_step` hook sees them) on the held-out prompts and appends the point to `log`, one JSON line.
It only measures: nothing is chosen by it, and the training is the same with or without it (the
greedy evaluation draws no random numbers and the loop puts the model back into train mode).
A resumed run appends the points it scores again; `read_curve` keeps the last one of each step.
"""

import json
import time
from collections.abc import Callable
from pathlib import Path

from polydistill.train.loop import StepHook

CURVE_LOG = "heldout_curve.jsonl"


def curve_hook(
    score: Callable[[], dict[str, float]],
    every: int,
    log: Path,
    then: StepHook | None = None,
) -> StepHook:
    """An `on_step` hook: every `every` steps, `score()` (accuracy per tag) appended to `log`
    with the step, the seconds it took and the wall clock after it; then `then` (whose answer it
    returns)."""
    if every < 1:
        raise ValueError(f"every must be ≥ 1, got {every}")

    def on_step(step: int, record: dict) -> bool:
        if step % every == 0:
            started = time.perf_counter()
            accuracy = score()
            seconds = round(time.perf_counter() - started, 3)
            # `time` (the wall clock when scored) lets a reader tell training time from scoring
            # time between two points: (time - previous time - seconds) / steps between them
            point = {"step": step, "accuracy": accuracy, "seconds": seconds, "time": time.time()}
            with log.open("a", encoding="utf-8") as file:
                file.write(json.dumps(point) + "\n")
        return bool(then and then(step, record))

    return on_step


def read_curve(log: Path) -> list[dict]:
    """The points of `log` by step (the last one written for a step scored twice)."""
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    points = {point["step"]: point for point in map(json.loads, lines)}
    return [points[step] for step in sorted(points)]
