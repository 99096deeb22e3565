"""The training loop: plain PyTorch, read top to bottom.

    records = train(model, supervised_batches(...), sft_loss, steps=1000, lr=3e-3,
                    accumulation_steps=4, run_dir=Path("runs/x/student"), checkpoint_every=100,
                    resume=True, fingerprint=cfg_dict)

The loop knows nothing of teachers: supervised fine-tuning of the world's teachers and
distillation of students both come through `loss_fn`.

- Data: `batch_at(i)` is the i-th micro-batch, a pure function of `i`, so the data position of a
  checkpoint is one number and a resumed run sees exactly the batches the killed one would have.
- Loss: `loss_fn(model, batch)` returns the *sum* of the loss over the tokens it counts, their
  number, and named parts (sums too) for the log. An optimiser step backpropagates every
  micro-batch's sum and divides the gradients by the step's total token count, so 4 micro-batches
  of B/4 give the gradient of one batch of B even when they hold different numbers of tokens.
- AdamW (no decay on embeddings, norms and biases), linear warmup then cosine decay to
  `min_lr_ratio · lr` at the last step, gradient clipping (the logged norm is before clipping).
- Precision: "float32", or "bfloat16" as autocast around the forward pass and the loss: weights,
  gradients and optimiser state stay in float32 (master weights), matrix products run in
  bfloat16. A model stored in bfloat16 would lose AdamW's small updates to rounding.
- `ema_decay`: keep an exponential moving average of the weights (`train.average`, saved in every
  checkpoint); when the run ends the model's weights are replaced by their average, so the
  returned model, the last checkpoint and a resumed finished run all hold it. `on_step` hooks see
  the raw weights.
- `select_by`: every `select_every` steps and at the end, score the weights the run would return
  (`train.selection`; the score is the step record's `validation`); the run returns the best.
- Deterministic: a fresh run seeds python, numpy and torch with `seed`; on CPU with the same
  thread count, the same seed gives bit-identical weights, and so does a killed-and-resumed run.
- With `run_dir`: `train_log.jsonl` (+ TensorBoard, see `train.log`) and, every
  `checkpoint_every` steps and at the end, checkpoints under `run_dir/checkpoints` (see
  `train.checkpoint`). `resume=True` continues from the newest one; a checkpoint whose settings (the
  loop's and the caller's `fingerprint`) differ from this run's is a UserError, and a fresh run
  never writes over existing checkpoints.
"""

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from polydistill.errors import UserError
from polydistill.train.average import (
    copy_average_into,
    fresh_average,
    load_average,
    update_average,
)
from polydistill.train.checkpoint import (
    clear_leftovers,
    list_checkpoints,
    restore_training_state,
    save_training_state,
)
from polydistill.train.log import TrainLog
from polydistill.train.selection import (
    CHOICE_FILE,
    ScoreFn,
    consider,
    load_selection,
    write_selection,
)
from polydistill.train.settings import PRECISIONS, checked_settings
from polydistill.train.step import BatchFn, LossFn, optimizer_step

StepHook = Callable[[int, dict[str, float]], bool | None]
CHECKPOINTS_DIR = "checkpoints"


def cosine_lr(step: int, steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Rate of the 0-based `step`: linear warmup up to `lr`, then cosine decay that reaches
    `min_lr_ratio · lr` at the last step (`steps - 1`)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - 1 - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def make_optimizer(
    model: PreTrainedModel, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only (not embeddings, norms, biases)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if p.ndim < 2 or "embed" in n]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def start_state(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    checkpoints: Path | None,
    resume: bool,
    settings: dict[str, Any],
    seed: int,
    restore: Callable[..., dict[str, Any]] = restore_training_state,
) -> tuple[dict[str, Any], Path | None]:
    """The state to start from and the checkpoint it came from: the newest checkpoint when
    resuming (loaded by `restore(path, model, optimizer, settings)`), else a freshly seeded
    state (and None)."""
    found = list_checkpoints(checkpoints) if checkpoints else []
    if checkpoints:
        clear_leftovers(checkpoints)
    if found and not resume:
        raise UserError(
            f"{checkpoints} already holds checkpoints (newest {found[-1].name}); "
            "resume the run, or train into another folder"
        )
    if found:
        return restore(found[-1], model, optimizer, settings), found[-1]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return {"step": 0, "next_micro_batch": 0, "finished": False}, None


def train(
    model: PreTrainedModel,
    batch_at: BatchFn,
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    betas: tuple[float, float] = (0.9, 0.98),
    accumulation_steps: int = 1,
    precision: str = "float32",
    gradient_checkpointing: bool = False,
    seed: int = 0,
    ema_decay: float | None = None,
    run_dir: Path | None = None,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 2,
    resume: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    on_step: StepHook | None = None,
    select_every: int = 0,
    select_by: ScoreFn | None = None,
) -> list[dict[str, float]]:
    """Run up to `steps` optimiser steps, fewer if `on_step(step, record)` returns True.

    Returns the records of the steps run by this call (a resumed run's earlier ones are in
    `run_dir/train_log.jsonl`). `fingerprint`: JSON-able description of everything outside the
    loop that shapes the run (model, data, loss), compared on resume.
    """
    settings = checked_settings(
        steps,
        lr,
        warmup_steps,
        min_lr_ratio,
        weight_decay,
        grad_clip,
        betas,
        accumulation_steps,
        precision,
        seed,
        (run_dir, checkpoint_every, keep_checkpoints, resume),
        fingerprint,
        ema_decay,
        select_every,
        select_by,
    )
    optimizer = make_optimizer(model, lr, weight_decay, betas)
    checkpoints = run_dir / CHECKPOINTS_DIR if run_dir and checkpoint_every else None
    state, source = start_state(model, optimizer, checkpoints, resume, settings, seed)
    if state["finished"]:
        model.eval()
        return []
    run = _RunState(
        model, optimizer, settings, run_dir, checkpoints, checkpoint_every, keep_checkpoints
    )
    if ema_decay is not None:
        run.average = load_average(source, model) if source else fresh_average(model)
        run.ema_decay = ema_decay
    if select_by:
        run.selection = load_selection(source, state)
        run.select_every, run.select_by = select_every, select_by
    if run_dir:  # a choice from an earlier, unfinished or other run in this folder is stale
        (run_dir / CHOICE_FILE).unlink(missing_ok=True)
    if gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    records: list[dict[str, float]] = []
    position = state["next_micro_batch"]
    try:
        with TrainLog(run_dir, state["step"]) as log:
            for step in range(state["step"], steps):
                rate = cosine_lr(step, steps, lr, warmup_steps, min_lr_ratio)
                micro = (batch_at(i) for i in range(position, position + accumulation_steps))
                position += accumulation_steps
                record = {
                    "step": step + 1,
                    **optimizer_step(
                        model, optimizer, loss_fn, micro, rate, grad_clip, PRECISIONS[precision]
                    ),
                }
                if run.average is not None:
                    update_average(run.average, model, ema_decay, step + 1)
                scored = run.score_if_due(step + 1, steps, record)
                records.append(record)
                log.write(record)
                stop = bool(on_step and on_step(step + 1, record))
                run.close_step(step + 1, position, stop or step + 1 == steps, scored)
                if stop:
                    break
    finally:
        if gradient_checkpointing:
            model.activation_checkpointing_disable()
        model.eval()
    return records


@dataclass
class _RunState:
    """What the loop keeps across steps besides the model's own weights: the optimiser, the
    moving average and the validation choice (when asked for), and where checkpoints go."""

    model: PreTrainedModel
    optimizer: torch.optim.Optimizer
    settings: dict[str, Any]
    run_dir: Path | None
    checkpoints: Path | None
    checkpoint_every: int
    keep_checkpoints: int
    average: Any = None
    ema_decay: float | None = None
    selection: Any = None
    select_every: int = 0
    select_by: ScoreFn | None = None

    def score_if_due(self, step: int, steps: int, record: dict[str, float]) -> bool:
        """Score the weights the run would return every `select_every` steps and at the last;
        the score goes into the step's record."""
        if self.selection is None or not (step % self.select_every == 0 or step == steps):
            return False
        record["validation"] = consider(
            self.selection, self.model, self.average, step, self.select_by
        )
        return True

    def close_step(self, step: int, position: int, done: bool, scored: bool) -> None:
        """After the step's hooks: at the end (the last step or a hook's stop) the model takes
        its average, then the best-scoring weights; then the checkpoint, when one is due."""
        if self.selection is not None and done and not scored:
            consider(self.selection, self.model, self.average, step, self.select_by)
        if self.average is not None and done:
            copy_average_into(self.model, self.average)
        if self.selection is not None and done:
            copy_average_into(self.model, self.selection.weights)
            if self.run_dir:
                write_selection(self.run_dir, self.selection)
        if self.checkpoints and (done or step % self.checkpoint_every == 0):
            state = {
                "step": step,
                "next_micro_batch": position,
                "finished": done,
                "settings": self.settings,
            }
            if self.selection is not None:
                state["selection"] = self.selection.state()
            save_training_state(
                self.checkpoints,
                self.model,
                self.optimizer,
                state,
                self.keep_checkpoints,
                self.average,
                self.selection,
            )
