"""The on-policy benchmark's section of RESULTS.md, from its JSON alone (`benchmarks/on_policy.py`
measures): final accuracy per tag and arm over the seeds, the steps to 95% of each specialist,
the verdicts said from those numbers, the controls, the mean curves and the costs.
"""

import statistics

from benchmarks import results_md
from polydistill.report.tables import SPECIALIST_SHARE, best_teachers

SECTION = "## On-policy against off-policy distillation (benchmarks/on_policy.py)"
ARMS = ("off-policy", "off → on", "mixed")
# Controls of the switched arm, from the same first run: its second run off-policy (the restart
# of the schedule alone), or on-policy graded by each tag's specialist instead of the evidence.
CONTROLS = ("off → off", "off → on, routed")
NOT_REACHED = None
COSTS = ("seconds", "curve_seconds", "samples", "graded_positions", "teacher_calls")


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
    lines = results_md.heading(SECTION, result)
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
