"""The training loop's settings: checked once, and recorded in every checkpoint.

    settings = checked_settings(steps, lr, ..., (run_dir, checkpoint_every, keep, resume), fp)

`train.loop.train` and `train.distributed_loop.train_distributed` take the same loop arguments;
both check them here and record the same `{"loop": ..., "run": fingerprint}`, which a resumed
run compares with its checkpoint's (`train.checkpoint.check_settings`).
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from polydistill.errors import UserError
from polydistill.train.selection import ScoreFn

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def check_loop_arguments(
    steps: int,
    accumulation_steps: int,
    precision: str,
    keep_checkpoints: int,
    checkpoint_every: int,
    resume: bool,
    run_dir: Path | None,
    ema_decay: float | None,
    select_every: int,
    select_by: ScoreFn | None,
) -> None:
    if (select_by is None) != (select_every == 0) or select_every < 0:
        raise UserError(f"select_every ({select_every}) must be ≥ 1 with select_by, else 0")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise UserError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if steps < 1 or accumulation_steps < 1:
        raise UserError(
            f"steps ({steps}) and accumulation_steps ({accumulation_steps}) must be ≥ 1"
        )
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if keep_checkpoints < 1 or checkpoint_every < 0:
        raise UserError("keep_checkpoints must be ≥ 1 and checkpoint_every ≥ 0")
    if resume and not (run_dir and checkpoint_every):
        raise UserError("resume needs a run folder (run_dir) with checkpoints (checkpoint_every)")


def checked_settings(
    steps: int,
    lr: float,
    warmup_steps: int,
    min_lr_ratio: float,
    weight_decay: float,
    grad_clip: float | None,
    betas: tuple[float, float],
    accumulation_steps: int,
    precision: str,
    seed: int,
    checkpointing: tuple[Path | None, int, int, bool],
    fingerprint: Mapping[str, Any] | None,
    ema_decay: float | None = None,
    select_every: int = 0,
    select_by: ScoreFn | None = None,
) -> dict[str, Any]:
    """The run's settings as a checkpoint records them (compared on resume), once the
    arguments are checked. `checkpointing`: (run_dir, checkpoint_every, keep_checkpoints,
    resume)."""
    run_dir, checkpoint_every, keep_checkpoints, resume = checkpointing
    check_loop_arguments(
        steps,
        accumulation_steps,
        precision,
        keep_checkpoints,
        checkpoint_every,
        resume,
        run_dir,
        ema_decay,
        select_every,
        select_by,
    )
    loop = {
        "steps": steps,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "min_lr_ratio": min_lr_ratio,
        "weight_decay": weight_decay,
        "grad_clip": grad_clip,
        "betas": list(betas),
        "accumulation_steps": accumulation_steps,
        "precision": precision,
        "seed": seed,
    }
    if ema_decay is not None:  # absent otherwise, so checkpoints from before it still resume
        loop["ema_decay"] = ema_decay
    if select_every:
        loop["select_every"] = select_every
    return {"loop": loop, "run": dict(fingerprint or {})}
