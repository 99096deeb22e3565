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
The result goes to benchmarks/results/on_policy.json unless `--json` names another file.
"""

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import results_md
from benchmarks.child_runs import polydistill_cli, timed_run
from polydistill.report.tables import SPECIALIST_SHARE, best_teachers

SECTION = "## On-policy against off-policy distillation (benchmarks/on_policy.py)"
DEFAULT_CONFIG = Path("examples/specialists.yaml")
ARMS = ("off-policy", "off → on", "mixed")
# Controls of the switched arm, from the same first run: its second run off-policy (the restart
# of the schedule alone), or on-policy graded by each tag's specialist instead of the evidence.
CONTROLS = ("off → off", "off → on, routed")
# A switched arm's second run: (on-policy mix, graded by route).
SWITCHED = {"off → on": (1.0, False), "off → off": (0.0, False), "off → on, routed": (1.0, True)}
NOT_REACHED = None
DEFAULTS = {"config": DEFAULT_CONFIG, "seeds": [0, 1, 2], "steps": 300, "switch": 150,
            "mix": 0.5, "every": 50, "buffer_prompts": 128, "buffer_steps": 1,
            "max_new_tokens": 16}  # fmt: skip
COSTS = ("seconds", "curve_seconds", "samples", "graded_positions", "teacher_calls")


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


def reached(curve: list[dict], tag: str, target: float) -> int | None:
    """The first step of `curve` whose accuracy on `tag` is at least `target`."""
    return next((p["step"] for p in curve if p["accuracy"][tag] >= target), NOT_REACHED)


def targets(result: dict) -> dict[str, tuple[str, float]]:
    """Per tag, the specialist (the most accurate teacher) and `SPECIALIST_SHARE` of its
    accuracy."""
    teachers = result["runs"][0]["teachers"]
    best = best_teachers(teachers, result["tags"])
    return {
        tag: (name.removeprefix("teacher:"), SPECIALIST_SHARE * a)
        for tag, (name, a) in best.items()
    }


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ({min(values):.3f}–{max(values):.3f})"


def _by_arm(result: dict, arms: tuple[str, ...] = ARMS + CONTROLS) -> dict[str, list[dict]]:
    """The runs of each of `arms` that the result has, in that order."""
    grouped = {arm: [r for r in result["runs"] if r["arm"] == arm] for arm in arms}
    return {arm: runs for arm, runs in grouped.items() if runs}


def _steps_cell(runs: list[dict], tag: str, target: float) -> str:
    steps = [reached(r["curve"], tag, target) for r in runs]
    return " · ".join("—" if s is NOT_REACHED else str(s) for s in steps)


def verdict(result: dict) -> list[str]:
    """Per tag, which arm ends highest and whether the seeds separate it from the next."""
    arms, lines = _by_arm(result, ARMS), []
    if len(arms) < 2:
        return lines
    for tag in result["tags"]:
        finals = {arm: [r["accuracy"][tag] for r in runs] for arm, runs in arms.items()}
        order = sorted(finals, key=lambda a: statistics.fmean(finals[a]), reverse=True)
        best, second = order[0], order[1]
        gap = statistics.fmean(finals[best]) - statistics.fmean(finals[second])
        separated = min(finals[best]) > max(finals[second])
        how = (
            "every seed of it above every seed of the next"
            if separated
            else "within the spread of the seeds"
        )
        if gap == 0:
            tied = f"{statistics.fmean(finals[best]):.3f}"
            lines.append(f"- {tag}: *{best}* and *{second}* tie at {tied} ({how}).")
        else:
            lines.append(f"- {tag}: *{best}* ends highest, {gap:+.3f} over *{second}* ({how}).")
    return lines


def none_reached(result: dict) -> list[str]:
    """A line when no run reaches its target on any tag (the steps table is all dashes)."""
    goals = targets(result)
    if any(
        reached(r["curve"], tag, goals[tag][1]) is not NOT_REACHED
        for r in result["runs"]
        for tag in result["tags"]
    ):
        return []
    steps = result["settings"]["steps"]
    return [f"- No run reaches {SPECIALIST_SHARE:.0%} of a specialist in {steps} steps."]


def controls_text(result: dict) -> list[str]:
    """What the control arms are, and the commands that added them."""
    added = " ".join(
        f"`{a['command']}` ({a['environment']['date_utc']} UTC, load average "
        f"{a['environment']['load_start']} at start, {a['environment'].get('load_end')} at "
        "end; it shared the cores with the command above where their times overlap)."
        for a in result.get("added", [])
    )
    return [
        "Controls, from the same first run as *off → on*: *off → off* goes on off-policy after "
        "the same restart (`student.on_policy` mix 0 with the warm start: a new warmup and "
        "cosine schedule), which separates the restart from the student's own samples; "
        "*off → on, routed* has the samples graded by each tag's specialist alone "
        "(`student.fusion.strategy: route`, the config's domains) instead of the evidence "
        f"routing, which separates who grades. Added by {added}"
    ]


def _every(steps: int) -> str:
    return "at every on-policy step" if steps == 1 else f"every {steps} steps"


def _above(high: list[float], low: list[float]) -> bool:
    """Every seed of `high` above every seed of `low`."""
    return min(high) > max(low)


def _compare(a: list[float], b: list[float], names: tuple[str, str]) -> str:
    if _above(a, b):
        return f"{names[0]} ends above {names[1]} on every seed"
    if _above(b, a):
        return f"{names[1]} ends above {names[0]} on every seed"
    return f"{names[0]} and {names[1]} overlap across the seeds"


def controls_verdict(result: dict) -> list[str]:
    """Per tag, *off → on* against each control that the result has: the restart alone
    (*off → off*) and grading by the specialist (*off → on, routed*)."""
    arms = _by_arm(result)
    if "off → on" not in arms:
        return []
    lines = []
    for tag in result["tags"]:
        finals = {arm: [r["accuracy"][tag] for r in runs] for arm, runs in arms.items()}
        said = [
            _compare(finals["off → on"], finals[control], ("*off → on*", f"*{control}*"))
            for control in CONTROLS
            if control in finals
        ]
        if said:
            means = " · ".join(f"{a} {statistics.fmean(finals[a]):.3f}" for a in finals)
            lines.append(f"- {tag} ({means}): {'; '.join(said)}.")
    return lines


def curve_table(result: dict, arms: dict[str, list[dict]]) -> list[str]:
    """Held-out accuracy per arm at every curve step, mean over seeds, tags joined by ` / `."""
    tags = result["tags"]
    steps = [p["step"] for p in next(iter(arms.values()))[0]["curve"]]
    lines = [
        f"The curves: held-out accuracy ({' / '.join(tags)}) at each step, mean over seeds:",
        "",
        "| arm | " + " | ".join(map(str, steps)) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for arm, group in arms.items():
        cells = []
        for i, _ in enumerate(steps):
            means = [statistics.fmean(r["curve"][i]["accuracy"][t] for r in group) for t in tags]
            cells.append(" / ".join(f"{m:.2f}" for m in means))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    """The section: accuracy per tag and arm, steps to 95% of each specialist, and costs."""
    runs, tags, arms = result["runs"], result["tags"], _by_arm(result)
    goals = targets(result)
    seeds = ", ".join(str(s) for s in result["seeds"])
    minutes = round(result["seconds"] / 60)
    s = result["settings"]
    taken = result["capture_seconds"]
    captured = "" if taken is None else f" ({taken / 60:.1f} min, not in the arms' wall times)"
    lines = [SECTION, "", results_md.environment_lines(result), results_md.load_sentence(result)]
    lines += [
        "",
        f"Each arm trains the student of `{result['config']}` for {s['steps']} optimiser steps "
        f"of the config's batch, student seeds {seeds} ({minutes} min of runs in all; each "
        "command runs its runs one after another). *off-policy*: the config as it is. "
        f"*off → on*: {s['switch']} steps "
        f"off-policy, then {s['steps'] - s['switch']} on the student's own samples "
        "(`student.on_policy` mix 1, `warm_start` from the first run's student; each run has "
        f"its own warmup and cosine schedule). *mixed*: mix {s['mix']} for all the steps "
        f"(spread evenly: {s['mix']:.0%} of the steps on-policy). On-policy steps sample "
        f"{s['buffer_prompts']} prompts, one answer each of at most {s['max_new_tokens']} "
        f"tokens, {_every(s['buffer_steps'])}; "
        "the loss, fusion and top-k are the config's. The teachers' readings of the training "
        f"prompts were captured once{captured} (`polydistill capture`) and read from that "
        "store by every run (`student.store`); the live teachers grade the samples.",
        "",
        "Held-out exact match per tag, mean over seeds (min–max), and the specialist "
        "(the most accurate teacher on the tag):",
        "",
        f"| arm | {' | '.join(tags)} |",
        "|---|" + "---:|" * len(tags),
    ]
    for arm, group in arms.items():
        cells = " | ".join(_cell([r["accuracy"][t] for r in group]) for t in tags)
        lines.append(f"| {arm} | {cells} |")
    teachers = runs[0]["teachers"]
    specialists = " | ".join(
        f"{teachers['teacher:' + goals[t][0]][t]:.3f} ({goals[t][0]})" for t in tags
    )
    lines.append(f"| *specialist* | {specialists} |")
    lines += [
        "",
        f"Steps to reach {SPECIALIST_SHARE:.0%} of the specialist's held-out accuracy per seed "
        f"(scored every {s['every']} steps, `student.heldout_every`; — : not reached in "
        f"{s['steps']} steps), and what each arm cost (mean over seeds: wall time of its "
        "`polydistill run`s, curve evaluations included; the student's samples the teachers "
        "graded, and the answer positions in them):",
        "",
        f"| arm | {' | '.join(f'{t} (≥ {goals[t][1]:.3f})' for t in tags)} | wall | "
        "of it, curve | samples graded | positions graded | teacher calls |",
        "|---|" + "---:|" * (len(tags) + 5),
    ]
    for arm, group in arms.items():
        steps = " | ".join(_steps_cell(group, t, goals[t][1]) for t in tags)
        mean = {k: statistics.fmean(r[k] for r in group) for k in COSTS}
        lines.append(
            f"| {arm} | {steps} | {mean['seconds'] / 60:.1f} min | "
            f"{mean['curve_seconds'] / 60:.1f} min | {mean['samples']:,.0f} | "
            f"{mean['graded_positions']:,.0f} | {mean['teacher_calls']:,.0f} |"
        )
    if any(arm in arms for arm in CONTROLS):
        lines += ["", *controls_text(result), "", *controls_verdict(result)]
    lines += ["", *curve_table(result, arms)]
    lines += [
        "",
        "Which wins where (final held-out accuracy, from the table):",
        "",
        *verdict(result),
        *none_reached(result),
    ]
    truncated = {
        arm: sum(r["truncated"] for r in group) / max(1, sum(r["samples"] for r in group))
        for arm, group in arms.items()
        if any(r["samples"] for r in group)
    }
    if truncated:
        listed = ", ".join(f"{arm} {share:.1%}" for arm, share in truncated.items())
        lines += [
            "",
            f"Student samples cut at `max_new_tokens` before the student ended its answer: "
            f"{listed}.",
        ]
    return "\n".join(lines) + "\n"


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
