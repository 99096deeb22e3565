"""Off-policy, off-policy then on-policy, or mixed? The student at equal steps, per tag.

    python -m benchmarks.on_policy --set world.cache_dir=/path/to/worlds      # seeds 0 1 2
    python -m benchmarks.on_policy --steps 300 --switch 150 --mix 0.5 --every 50 --seeds 0

For every seed, three arms train the student of CONFIG (default examples/specialists.yaml) for
the same `--steps` optimiser steps of the config's batch size, each a `polydistill run` in a
child process (the world is built once, in the config's world cache, and shared):

- *off-policy*: the config as it is, on the teachers' answers.
- *off → on*: `--switch` steps off-policy (a run of that many steps), then the rest on the
  student's own samples (`student.on_policy`, mix 1, `warm_start` from the first run's
  student): the recipe of the Qwen3 report and GKD's warm start. Each run has its own warmup
  and cosine schedule, as two `polydistill run`s do.
- *mixed*: `student.on_policy.mix` = `--mix` for all the steps (GKD's λ: that share of the steps,
  spread evenly, on the student's samples, the others off-policy).

The on-policy steps sample `--buffer-prompts` prompts (one answer each) every `--buffer-steps`
steps; the loss, the fusion and the teachers' top-k are the config's in every arm, so the arms
differ only in whose answers the student learns from. `student.train.seed` and
`student.on_policy.seed` are the seed. Every `--every` steps (`student.heldout_every`) each run
scores its student on the held-out prompts, as the final evaluation does: the curve gives the
steps to reach 95% of the specialist's held-out accuracy per tag (the most accurate teacher on
it, from the same run). Records per arm the final accuracy per tag, the curve, the wall time
of the child processes (each also evaluates the teachers and reads their answers to every
training prompt) and what the on-policy steps cost in samples and teacher-graded positions.
The result goes to benchmarks/results/on_policy.json unless `--json` names another file;
`on_policy_report` renders its section of RESULTS.md.
"""

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import results_md
from benchmarks.child_runs import polydistill_cli, timed_run
from benchmarks.on_policy_report import ARMS, CONTROLS, markdown

DEFAULT_CONFIG = Path("examples/specialists.yaml")
# A switched arm's second run: (on-policy mix, graded by route).
SWITCHED = {"off → on": (1.0, False), "off → off": (0.0, False), "off → on, routed": (1.0, True)}
DEFAULTS = {"config": DEFAULT_CONFIG, "seeds": [0, 1, 2], "steps": 300, "switch": 150,
            "mix": 0.5, "every": 50, "buffer_prompts": 128, "buffer_steps": 1,
            "max_new_tokens": 16}  # fmt: skip


def run_child(cli: Path, config: Path, out: Path, overrides: list[str]) -> dict:
    """One `polydistill run`: its wall seconds, metrics and on-policy refreshes."""
    seconds, metrics = timed_run(cli, config, out, overrides)
    refresh_log = out / "train_logs" / "student.on_policy.jsonl"
    lines = refresh_log.read_text().splitlines() if refresh_log.is_file() else []
    return {"seconds": seconds, "metrics": metrics, "refreshes": [json.loads(x) for x in lines]}


def on_policy_overrides(args: argparse.Namespace, seed: int, mix: float, **more) -> str:
    """`student.on_policy` as one override (JSON is YAML)."""
    settings = {
        "mix": mix,
        "seed": seed,
        "buffer_prompts": args.buffer_prompts,
        "buffer_steps": args.buffer_steps,
        "max_new_tokens": args.max_new_tokens,
        "generation_batch_size": args.buffer_prompts,  # one batch: the fastest on the CPU
        **more,
    }
    return f"student.on_policy={json.dumps(settings)}"


def arm_result(
    arm: str, seed: int, parts: list[dict], offsets: list[int], on_policy_steps: int
) -> dict:
    """An arm's record from its runs (`offsets`: the steps done before each run)."""
    last = parts[-1]["metrics"]["models"]
    curve = [
        {"step": point["step"] + offset, "accuracy": point["accuracy"]}
        for part, offset in zip(parts, offsets, strict=True)
        for point in part["metrics"]["models"]["student"].get("curve", [])
    ]
    refreshes = [r for part in parts for r in part["refreshes"]]
    return {
        "arm": arm,
        "seed": seed,
        "seconds": round(sum(p["seconds"] for p in parts), 1),
        "run_seconds": [p["seconds"] for p in parts],
        "curve_seconds": round(
            sum(
                pt.get("seconds", 0)
                for p in parts
                for pt in p["metrics"]["models"]["student"].get("curve", [])
            ),
            1,
        ),
        "accuracy": last["student"]["accuracy"],
        "teachers": {n: m["accuracy"] for n, m in last.items() if n.startswith("teacher:")},
        "curve": curve,
        "on_policy_steps": on_policy_steps,
        "refreshes": len(refreshes),
        "samples": sum(r["samples"] for r in refreshes),
        "truncated": sum(r["truncated"] for r in refreshes),
        "graded_positions": sum(r["positions"] for r in refreshes),
        "teacher_calls": sum(r["teacher_calls"] for r in refreshes),
        "prompts": parts[-1]["metrics"]["data"],
    }


def routes(config: Path) -> dict[str, str]:
    """Each tag's specialist by the config: the teacher whose `domains` name it."""
    teachers = yaml.safe_load(config.read_text())["teachers"]
    return {domain: t["name"] for t in teachers for domain in t.get("domains", [])}


def run_seed(
    cli: Path, args: argparse.Namespace, scratch: Path, seed: int, shared: list[str]
) -> list[dict]:
    """The `--arms` of one seed, one run after another (`shared`: overrides of every run). The
    switched arms share their first, off-policy run (the same settings and seed)."""
    common = [*shared, f"student.train.seed={seed}", f"student.heldout_every={args.every}"]
    steps = [f"student.train.steps={args.steps}"]
    runs, first = [], None
    for index, arm in enumerate(args.arms):
        if arm == "off-policy":
            off = run_child(cli, args.config, scratch / f"off-{seed}", common + steps)
            runs.append(arm_result(arm, seed, [off], [0], 0))
        elif arm == "mixed":
            mixed = [*steps, on_policy_overrides(args, seed, args.mix)]
            both = run_child(cli, args.config, scratch / f"mixed-{seed}", common + mixed)
            runs.append(arm_result(arm, seed, [both], [0], math.floor(args.steps * args.mix)))
        else:
            if first is None:
                short = [*common, f"student.train.steps={args.switch}"]
                first = run_child(cli, args.config, scratch / f"first-{seed}", short)
            mix, routed = SWITCHED[arm]
            start = str(scratch / f"first-{seed}" / "student")
            rest = [f"student.train.steps={args.steps - args.switch}"]
            rest.append(on_policy_overrides(args, seed, mix, warm_start=start))
            if routed:
                fusion = {"strategy": "route", "routes": routes(args.config)}
                rest.append(f"student.fusion={json.dumps(fusion)}")
            then = run_child(cli, args.config, scratch / f"then-{seed}-{index}", common + rest)
            done = (args.steps - args.switch) if mix else 0
            runs.append(arm_result(arm, seed, [first, then], [0, args.switch], done))
        print(f"seed {seed} {arm}: {runs[-1]['accuracy']} in {runs[-1]['seconds']} s", flush=True)
    return runs


def capture(cli: Path, args: argparse.Namespace, store: Path) -> float:
    """The teachers' answers and readings of the training prompts, once for every run (their
    answers are greedy, so the same for every seed): seconds taken."""
    command = [str(cli), "capture", str(args.config), "--out", str(store), *args.set]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: capture failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - started, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps of every arm")
    parser.add_argument("--switch", type=int, default=150, help="off-policy steps of off → on")
    parser.add_argument("--mix", type=float, default=0.5, help="the mixed arm's λ")
    parser.add_argument("--every", type=int, default=50, help="steps between curve points")
    parser.add_argument("--buffer-prompts", type=int, default=128)
    parser.add_argument("--buffer-steps", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="of a student sample")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="an override of every run (e.g. world.cache_dir=...)",
    )  # fmt: skip
    parser.add_argument(
        "--store", type=Path, help="a store `polydistill capture` wrote of this config and --set"
    )
    parser.add_argument(
        "--arms", nargs="+", choices=ARMS + CONTROLS, default=list(ARMS), metavar="ARM",
        help=f"of {', '.join(map(repr, ARMS + CONTROLS))}",
    )  # fmt: skip
    parser.add_argument(
        "--add-to", type=Path, help="add these arms' runs to this result of the same settings"
    )
    parser.add_argument(
        "--merge", type=Path, help="run nothing: add this result's runs to --add-to's"
    )
    parser.add_argument(
        "--json", type=Path, help="write here instead of benchmarks/results/on_policy.json"
    )
    args = parser.parse_args(argv)
    if args.merge and not args.add_to:
        parser.error("--merge needs --add-to")
    if not 0 < args.switch < args.steps or not 0 < args.mix <= 1:
        parser.error("need 0 < --switch < --steps and 0 < --mix ≤ 1")
    if args.steps % args.every or args.switch % args.every:
        parser.error("--every must divide --steps and --switch (the curves end on them)")
    cli = polydistill_cli()
    settings = {k: getattr(args, k) for k in DEFAULTS if k not in ("config", "seeds")}
    result = {
        "command": command_line(args),
        "environment": results_md.environment(),
        "config": str(args.config),
        "seeds": args.seeds,
        "settings": settings,
    }
    if args.merge:  # no run: the runs of that result into --add-to's
        merged = combine(json.loads(args.add_to.read_text()), json.loads(args.merge.read_text()))
        return finish(merged, args.json)
    if args.add_to:  # before the runs, not after
        check_same(json.loads(args.add_to.read_text()), result)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scratch = Path(tempfile.mkdtemp(prefix="on-policy-bench-"))
    started = time.perf_counter()
    try:
        store = args.store or scratch / "store"
        taken = None if args.store else capture(cli, args, store)
        shared = [*args.set, f"student.store={store.resolve()}"]
        runs = [r for s in args.seeds for r in run_seed(cli, args, scratch, s, shared)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = round(time.perf_counter() - started, 1)
    result.update(runs=runs, seconds=seconds, capture_seconds=taken)
    result["tags"] = list(runs[0]["accuracy"])
    if args.add_to:
        result["environment"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
        result = combine(json.loads(args.add_to.read_text()), result)
    finish(result, args.json)


def finish(result: dict, path: Path | None) -> None:
    """Save the result (benchmarks/results/on_policy.json unless `path`) and show its section."""
    written = results_md.save("on_policy", result, path)
    print(markdown(result))
    print(f"wrote {written}")


def check_same(result: dict, other: dict) -> None:
    """SystemExit unless both results were measured with the same config, seeds and settings."""
    for key in ("config", "seeds", "settings"):
        if result[key] != other[key]:
            raise SystemExit(f"error: the results differ in {key}: {result[key]}, {other[key]}")


def combine(result: dict, extra: dict) -> dict:
    """`result` with the runs of `extra` (of other arms, same config, seeds and settings) added,
    and `extra`'s command and machine under `added`."""
    check_same(result, extra)
    arms = list(dict.fromkeys(r["arm"] for r in extra["runs"]))
    if set(arms) & {r["arm"] for r in result["runs"]}:
        raise SystemExit(f"error: the result has runs of {arms} already")
    added = {"command": extra["command"], "environment": extra["environment"], "arms": arms}
    return {
        **result,
        "runs": result["runs"] + extra["runs"],
        "seconds": result["seconds"] + extra["seconds"],
        "added": [*result.get("added", []), added],
    }


def command_line(args: argparse.Namespace) -> str:
    """The command as the section shows it (options at their defaults left out)."""
    parts = ["python -m benchmarks.on_policy"]
    for key, default in DEFAULTS.items():
        value = getattr(args, key)
        if value != default:
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"--{key.replace('_', '-')} {shown}")
    if args.arms != list(ARMS):
        parts.append(f"--arms {shlex.join(args.arms)}")
    parts += [f"--set {item}" for item in args.set]
    if args.store:
        parts.append(f"--store {args.store}")
    return " ".join(parts)


if __name__ == "__main__":
    main()
