"""What is each teacher worth? The student against the same recipe without each teacher, per tag.

    python -m benchmarks.worth                          # examples/specialists.yaml, seeds 0 1 2
    python -m benchmarks.worth --seeds 0 --config examples/specialists.yaml

For every seed, runs `polydistill run CONFIG 'benchmark.baselines=[leave_one_out]'
student.train.seed=SEED` in a child process: the student and, for each teacher in turn, the same
student trained from readings as if that teacher had never been asked (same prompts, steps and
batch size). The world is built once (the config's world cache) and shared by every seed; only
the student's seed changes. Records each model's held-out accuracy per tag and the student's
signed lineage shares (fused target mass per teacher) from the run folder, and renders the mean
over seeds with the spread (min–max) into RESULTS.md: the accuracy a model without each teacher
loses or gains, i.e. the price of a model free of that teacher.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from benchmarks import results_md
from benchmarks.child_runs import polydistill_cli, timed_run

SECTION = "## What each teacher is worth (benchmarks/worth.py)"
DEFAULT_CONFIG = Path("examples/specialists.yaml")
WITHOUT = "baseline:without:"


def run_seed(cli: Path, config: Path, out: Path, seed: int) -> dict:
    """One run with the leave-one-out baselines: wall seconds, accuracy per model, shares."""
    overrides = ["benchmark.baselines=[leave_one_out]", f"student.train.seed={seed}"]
    seconds, metrics = timed_run(cli, config, out, overrides)
    lineage = json.loads((out / "student" / "lineage.json").read_text())
    return {
        "seed": seed,
        "seconds": seconds,
        "tags": metrics.get("tags") or metrics["domains"],
        "accuracy": {name: model["accuracy"] for name, model in metrics["models"].items()},
        "shares": {t["name"]: t.get("share") for t in lineage.get("teachers", [])},
    }


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ({min(values):.3f}–{max(values):.3f})"


def _delta_cell(student: list[float], without: list[float]) -> str:
    deltas = [s - w for s, w in zip(student, without, strict=True)]
    mean = statistics.fmean(deltas)
    return f"{mean:+.3f}" + (
        "" if len(deltas) == 1 else f" ({min(deltas):+.3f}…{max(deltas):+.3f})"
    )


def markdown(result: dict) -> str:
    """The section: per tag, the student, each model without one teacher, and what it loses."""
    runs = result["runs"]
    tags = runs[0]["tags"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    minutes = round(sum(r["seconds"] for r in runs) / 60)
    lines = results_md.heading(SECTION, result)
    lines += [
        "",
        f"`polydistill run {result['config']} 'benchmark.baselines=[leave_one_out]'`, student "
        f"seeds {seeds} ({minutes} min in all). Held-out exact match per tag, mean over seeds "
        "(min–max); *what it adds* is the student's accuracy minus the model trained without "
        "that teacher, the price of a model free of it:",
        "",
        f"| model | {' | '.join(tags)} |",
        "|---|" + "---:|" * len(tags),
    ]

    def column(name: str, tag: str) -> list[float]:
        return [r["accuracy"][name][tag] for r in runs]

    lines.append("| student | " + " | ".join(_cell(column("student", t)) for t in tags) + " |")
    without = [n for n in runs[0]["accuracy"] if n.startswith(WITHOUT)]
    for name in without:
        teacher = name.removeprefix(WITHOUT)
        cells = " | ".join(_cell(column(name, t)) for t in tags)
        lines.append(f"| without {teacher} | {cells} |")
        adds = " | ".join(_delta_cell(column("student", t), column(name, t)) for t in tags)
        lines.append(f"| *what {teacher} adds* | {adds} |")
    shares = runs[0]["shares"]
    if shares:
        listed = ", ".join(
            f"{name} {share:.3f}" for name, share in shares.items() if share is not None
        )
        lines += [
            "",
            f"Share of the student's fused target mass (its signed lineage, seed "
            f"{runs[0]['seed']}): {listed}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--json", type=Path, help="write here instead of benchmarks/results/worth.json"
    )
    args = parser.parse_args(argv)
    cli = polydistill_cli()
    command = "python -m benchmarks.worth" + f" --config {args.config}" * (
        args.config != DEFAULT_CONFIG
    )
    command += f" --seeds {' '.join(map(str, args.seeds))}" * (args.seeds != [0, 1, 2])
    result = {
        "command": command,
        "environment": results_md.environment(),
        "config": str(args.config),
    }
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scratch = Path(tempfile.mkdtemp(prefix="worth-bench-"))
    try:
        result["runs"] = [run_seed(cli, args.config, scratch / f"seed{s}", s) for s in args.seeds]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    path = results_md.save("worth", result, args.json)
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
