"""Where the training loop's per-step records go: `train_log.jsonl`, and TensorBoard if installed.

    with TrainLog(run_dir, resumed_step) as log:
        log.write({"step": 1, "loss": 2.3, "lr": 1e-3, ...})

One JSON object per line in `run_dir/train_log.jsonl`; every other number of a record is also a
TensorBoard scalar `train/<name>` in `run_dir/tensorboard/` when `torch.utils.tensorboard` can be
imported (tensorboard is not a dependency). A resumed run first drops the records past the step
it resumes from, which the killed run wrote after its last checkpoint, so that every step appears
once; TensorBoard is told to purge them too.
"""

import json
import os
from pathlib import Path
from typing import Any

LOG_FILE = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _summary_writer(folder: Path, resumed_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder), purge_step=resumed_step + 1 if resumed_step else None)


def keep_records_until(path: Path, step: int) -> None:
    """Rewrite the log with only the records of steps ≤ `step` (atomically)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and _record_step(line) <= step
    ]
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(partial, path)


def _record_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")  # a line torn by the kill


class TrainLog:
    """The records of one (possibly resumed) run; a no-op without `run_dir`."""

    def __init__(self, run_dir: Path | None, resumed_step: int) -> None:
        self._file = None
        self._tensorboard = None
        if run_dir is None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOG_FILE
        if resumed_step:
            keep_records_until(path, resumed_step)
        self._file = path.open("a" if resumed_step else "w", encoding="utf-8")
        self._tensorboard = _summary_writer(run_dir / TENSORBOARD_DIR, resumed_step)

    def write(self, record: dict[str, float]) -> None:
        if self._file:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tensorboard:
            for name, value in record.items():
                if name != "step":
                    self._tensorboard.add_scalar(f"train/{name}", value, record["step"])

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tensorboard:
            self._tensorboard.close()

    def __enter__(self) -> "TrainLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
