"""What would the demo's student need to reach 90% of each specialist, and how long would it take?

    python -m benchmarks.demo_budget                  # arms: 2,000 and 8,000 prompts per tag
    python -m benchmarks.demo_budget --steps 1200 --arm "wide: student.prompts_per_tag=8000"

`make demo` trains its student for 600 steps on 2,000 prompts per tag, inside a 10-minute run
that also builds the world. This trains the same student (CONFIG, default
examples/specialists.yaml) for `--steps` steps in each arm, a `polydistill run` in a child
process per arm with the arm's overrides (the world is built once, in the config's world cache,
and shared), and scores it on the held-out prompts every `--every` steps
(`student.heldout_every`), as the final evaluation does. Each arm's schedule (warmup, cosine)
spans its `--steps`, so a curve point is the student of a run of that length at that step, not
of a shorter run.

Per arm it records the curve, the final accuracy, the specialists' (the most accurate teacher per
tag, from the same run), the wall time, and the training seconds per step, measured between the
curve's points (`time` between two points less the scoring `seconds`). From them: per tag the
first step at 90% of the specialist, and the minutes of training that step costs. The result goes
to benchmarks/results/demo_budget.json unless `--json` names another file.
"""

import argparse
import os
import shlex
import shutil
import tempfile
from pathlib import Path

import yaml

from benchmarks import results_md
from benchmarks.child_runs import polydistill_cli, timed_run
from polydistill.report.tables import best_teachers

SECTION = "## What the demo's student needs (benchmarks/demo_budget.py)"
DEFAULT_CONFIG = Path("examples/specialists.yaml")
SHARE = 0.9
"""The bar: this share of the specialist's held-out accuracy, per tag."""
DEFAULT_ARMS = ("demo data: student.prompts_per_tag=2000", "4x data: student.prompts_per_tag=8000")


def parse_arm(text: str) -> tuple[str, list[str]]:
    """`"NAME: key=value key=value"` -> (NAME, overrides)."""
    name, _, overrides = text.partition(":")
    if not name.strip() or not overrides.strip():
        raise SystemExit(f"error: --arm {text!r}: expected 'NAME: key=value ...'")
    return name.strip(), shlex.split(overrides)


def run_arm(cli: Path, config: Path, out: Path, overrides: list[str]) -> dict:
    """One `polydistill run`: its wall seconds, metrics and the settings it ran with."""
    seconds, metrics = timed_run(cli, config, out, overrides)
    student = yaml.safe_load((out / "config.yaml").read_text())["student"]  # as the run read it
    return {
        "seconds": seconds,
        "metrics": metrics,
        "prompts_per_tag": student["prompts_per_tag"],
        "steps": student["train"]["steps"],
    }


def seconds_per_step(curve: list[dict]) -> float | None:
    """Training seconds per step between the curve's first and last points (the scoring between
    them taken out); None with fewer than two points."""
    if len(curve) < 2:
        return None
    first, last = curve[0], curve[-1]
    scoring = sum(p["seconds"] for p in curve[1:])
    return (last["time"] - first["time"] - scoring) / (last["step"] - first["step"])


def arm_result(name: str, overrides: list[str], run: dict) -> dict:
    models = run["metrics"]["models"]
    student = models["student"]
    curve = [{k: p[k] for k in ("step", "accuracy", "seconds", "time")} for p in student["curve"]]
    return {
        "arm": name,
        "overrides": overrides,
        "seconds": run["seconds"],
        "seconds_per_step": seconds_per_step(curve),
        "curve_seconds": round(sum(p["seconds"] for p in curve), 1),
        "accuracy": student["accuracy"],
        "teachers": {n: m["accuracy"] for n, m in models.items() if n.startswith("teacher:")},
        "curve": curve,
        "prompts_per_tag": run["prompts_per_tag"],
        "steps": run["steps"],
    }


def bars(arm: dict, tags: list[str]) -> dict[str, tuple[str, float]]:
    """Per tag, the specialist and `SHARE` of its held-out accuracy."""
    best = best_teachers(arm["teachers"], tags)
    return {tag: (name.removeprefix("teacher:"), SHARE * a) for tag, (name, a) in best.items()}


def first_step(curve: list[dict], tag: str, bar: float) -> int | None:
    """The first step of `curve` at or above `bar` on `tag`."""
    return next((p["step"] for p in curve if p["accuracy"][tag] >= bar), None)


def _minutes(steps: int | None, per_step: float | None) -> str:
    if steps is None or per_step is None:
        return "—"
    return f"{steps * per_step / 60:.1f}"


def arm_lines(arm: dict, tags: list[str]) -> list[str]:
    """An arm's curve table and where it reaches the bar."""
    limits = bars(arm, tags)
    per_step = arm["seconds_per_step"]
    lines = [
        f"**{arm['arm']}** (`{' '.join(arm['overrides'])}`): run {arm['seconds'] / 60:.1f} min "
        f"wall, of which curve scoring {arm['curve_seconds'] / 60:.1f} min; "
        + (f"{per_step:.3f} s per training step." if per_step else "one curve point."),
        "",
        f"| step | {' | '.join(tags)} | training min |",
        "|---:|" + "---:|" * (len(tags) + 1),
    ]
    for point in arm["curve"]:
        cells = " | ".join(
            f"**{point['accuracy'][t]:.3f}**" if point["accuracy"][t] >= limits[t][1] else
            f"{point['accuracy'][t]:.3f}"
            for t in tags
        )  # fmt: skip
        lines.append(f"| {point['step']} | {cells} | {_minutes(point['step'], per_step)} |")
    bar_cells = " | ".join(f"{limits[t][1]:.3f} ({limits[t][0]})" for t in tags)
    lines += [f"| 90% of the specialist | {bar_cells} | |", ""]
    reached = {t: first_step(arm["curve"], t, limits[t][1]) for t in tags}
    missing = [t for t, s in reached.items() if s is None]
    if missing:
        last = arm["curve"][-1]["step"]
        lines.append(f"Not at 90% within {last} steps: {', '.join(missing)}.")
    else:
        step = max(reached.values())
        lines.append(
            f"At 90% on every tag from step {step}: {_minutes(step, per_step)} min of training."
        )
    return [*lines, ""]


def markdown(result: dict) -> str:
    tags = result["tags"]
    lines = results_md.heading(SECTION, result)
    lines += [
        "",
        f"The student of `{result['config']}`, trained for {result['steps']} steps in each arm "
        f"and scored on the held-out prompts every {result['every']} steps (bold: at or above "
        "90% of the specialist). The demo trains it for 600 steps on 2,000 prompts per tag.",
        "",
    ]
    for arm in result["arms"]:
        lines += arm_lines(arm, tags)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=2400, help="optimiser steps of every arm")
    parser.add_argument("--every", type=int, default=300, help="steps between curve points")
    parser.add_argument(
        "--arm", action="append", help="'NAME: key=value ...' (repeatable); default: "
        + " and ".join(repr(a) for a in DEFAULT_ARMS),
    )  # fmt: skip
    parser.add_argument("--set", action="append", default=[], help="an override for every arm")
    parser.add_argument(
        "--json", type=Path, help="write here instead of benchmarks/results/demo_budget.json"
    )
    args = parser.parse_args(argv)
    arms = [parse_arm(a) for a in (args.arm or DEFAULT_ARMS)]
    cli = polydistill_cli()
    command = ["python", "-m", "benchmarks.demo_budget", "--steps", str(args.steps)]
    command += ["--every", str(args.every)] + [f"--arm={a}" for a in args.arm or []]
    command += [f"--set={s}" for s in args.set]
    result = {"command": shlex.join(command), "environment": results_md.environment()}
    result |= {"config": str(args.config), "steps": args.steps, "every": args.every, "arms": []}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shared = [f"student.train.steps={args.steps}", f"student.heldout_every={args.every}"]
    scratch = Path(tempfile.mkdtemp(prefix="demo-budget-"))
    try:
        for name, overrides in arms:
            run = run_arm(cli, args.config, scratch / name.replace(" ", "-"),
                          [*shared, *args.set, *overrides])  # fmt: skip
            result["arms"].append(arm_result(name, overrides, run))
            result["tags"] = run["metrics"]["domains"]
            print(f"{name}: {run['seconds']:.0f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    path = results_md.save("demo_budget", result, args.json)
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
