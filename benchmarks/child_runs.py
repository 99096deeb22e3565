"""The `polydistill` child processes a benchmark times: the venv's console script, one run.

    cli = polydistill_cli()                       # exits naming what to install when missing
    seconds, metrics = timed_run(cli, Path("examples/specialists.yaml"), out, ["threads=1"])

A run measured in a child process starts from nothing, as a user's does, and its wall time
includes loading the library.
"""

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def polydistill_cli() -> Path:
    """The `polydistill` console script beside this interpreter (the venv's)."""
    cli = Path(sys.executable).with_name("polydistill")
    if not cli.is_file():
        raise SystemExit(f"error: {cli} not found: install the project (make install)")
    return cli


def timed_run(cli: Path, config: Path, out: Path, overrides: list[str]) -> tuple[float, dict]:
    """`polydistill run CONFIG --out OUT OVERRIDES...`: its wall seconds and metrics.json; a
    failed run stops the benchmark with the command and the end of its stderr."""
    command = [str(cli), "run", str(config), "--out", str(out), *overrides]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode:
        raise SystemExit(
            f"error: {shlex.join(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return seconds, json.loads((out / "metrics.json").read_text())
