"""How long does `make demo`'s run take from scratch, and what does its student reach?

    python -m benchmarks.demo                     # examples/specialists.yaml, world built afresh
    python -m benchmarks.demo --config examples/specialists.yaml --reuse-world

Runs `polydistill run CONFIG --out <scratch>` in a child process with the world cache in the same
scratch folder (unless `--reuse-world`), so the world (tokenizers, three teachers) and the
student are built from nothing, as on a fresh clone with the venv installed; times the whole
run and records the accuracy, bits per byte and parameters of every model from its
`metrics.json`. Meant for a quiet machine: the wall time is what the README's demo figures
quote. The result goes to benchmarks/results/demo.json (`python -m benchmarks.results_md`
renders it into RESULTS.md) unless `--json` names another file.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import results_md
from benchmarks.child_runs import polydistill_cli

SECTION = "## Demo run (benchmarks/demo.py)"
DEFAULT_CONFIG = Path("examples/specialists.yaml")


def run_demo(config: Path, scratch: Path, reuse_world: bool) -> dict:
    """The run's wall seconds, exit status and metrics.json (None if it failed)."""
    out = scratch / "run"
    cli = polydistill_cli()
    command = [str(cli), "run", str(config), "--out", str(out)]
    if not reuse_world:
        command.append(f"world.cache_dir={scratch / 'worlds'}")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    metrics = out / "metrics.json"
    return {
        "seconds": round(seconds, 1),
        "returncode": done.returncode,
        "stderr_tail": done.stderr[-2000:] if done.returncode else "",
        "metrics": json.loads(metrics.read_text()) if metrics.is_file() else None,
    }


def markdown(result: dict) -> str:
    """The section for one run (`result` as `main` saves it)."""
    minutes, seconds = divmod(round(result["seconds"]), 60)
    world = "reusing a cached world" if result["reuse_world"] else "world built from scratch"
    lines = results_md.heading(SECTION, result)
    if result["metrics"] is None:
        lines += [
            "",
            f"The run failed (exit {result['returncode']}) after {minutes} min {seconds} s.",
        ]
        return "\n".join(lines) + "\n"
    domains = result["metrics"]["domains"]
    lines += [
        "",
        f"`polydistill run {result['config']}`, {world}: **{minutes} min {seconds} s** wall "
        f"(exit {result['returncode']}). Held-out exact match per domain, from its metrics.json:",
        "",
        f"| model | {' | '.join(domains)} | parameters |",
        "|---|" + "---:|" * (len(domains) + 1),
    ]
    for name, model in result["metrics"]["models"].items():
        accuracy = " | ".join(f"{model['accuracy'][d]:.3f}" for d in domains)
        lines.append(f"| {name} | {accuracy} | {model.get('params', '–'):,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", type=Path, help="write the result here instead of benchmarks/results/demo.json"
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--reuse-world", action="store_true", help="use the config's world cache")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.demo" + (f" --config {args.config}") * (
        args.config != DEFAULT_CONFIG
    )
    command += " --reuse-world" * args.reuse_world
    result = {"command": command, "environment": results_md.environment()}
    result |= {"config": str(args.config), "reuse_world": args.reuse_world}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scratch = Path(tempfile.mkdtemp(prefix="demo-bench-"))
    try:
        result |= run_demo(args.config, scratch, args.reuse_world)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    path = results_md.save("demo", result, args.json)
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
