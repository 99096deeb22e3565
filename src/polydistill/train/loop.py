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
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

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

Batch = dict[str, torch.Tensor]
BatchFn = Callable[[int], Batch]
StepHook = Callable[[int, dict[str, float]], bool | None]
CHECKPOINTS_DIR = "checkpoints"
RECORD_KEYS = ("step", "loss", "lr", "grad_norm", "loss_tokens", "tokens_per_s", "validation")


class LossOutput(NamedTuple):
    """What a loss function returns for one micro-batch."""

    loss_sum: torch.Tensor  # differentiable sum of the per-token losses
    tokens: float  # how many tokens that sum counts (their total weight when weighted)
    parts: dict[str, float]  # named sums for the log (e.g. the addends of loss_sum)


LossFn = Callable[[PreTrainedModel, Batch], LossOutput]


class StepTotals(NamedTuple):
    """One optimiser step's loss and parts (per token, or sums before `per_token`), and its
    token counts."""

    loss: float
    parts: dict[str, float]
    loss_tokens: float  # a count, or a weight sum when the loss weighs its tokens
    input_tokens: int


def cosine_lr(step: int, steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Rate of the 0-based `step`: linear warmup up to `lr`, then cosine decay that reaches
    `min_lr_ratio · lr` at the last step (`steps - 1`)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - 1 - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def sft_loss(model: PreTrainedModel, batch: Batch) -> LossOutput:
    """Summed cross-entropy on the label positions (-100 elsewhere), next-token shifted; each
    position weighted by `label_weights` when the batch has them (tokens: the weight sum)."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    labels = batch["labels"][:, 1:].flatten()
    shifted = logits[:, :-1].flatten(0, 1)
    if shifted.dtype not in (torch.float32, torch.float64):
        shifted = shifted.float()  # a softmax in half precision loses the small probabilities
    if "label_weights" not in batch:
        loss_sum = torch.nn.functional.cross_entropy(
            shifted, labels, ignore_index=-100, reduction="sum"
        )
        return LossOutput(loss_sum, int((labels != -100).sum()), {"ce": loss_sum.item()})
    counted = labels != -100
    weights = batch["label_weights"][:, 1:].flatten()[counted].to(shifted.dtype)
    per_token = torch.nn.functional.cross_entropy(
        shifted[counted], labels[counted], reduction="none"
    )
    loss_sum = (per_token * weights).sum()
    return LossOutput(loss_sum, float(weights.sum()), {"ce": loss_sum.item()})


def accumulate_gradients(
    model: PreTrainedModel,
    loss_fn: LossFn,
    micro_batches: Iterable[Batch],
    autocast_dtype: torch.dtype | None = None,
) -> StepTotals:
    """Leave in `.grad` the gradient of (Σ loss sums) / (Σ tokens) over the micro-batches.

    Tensors of each batch are moved to the model's device; other values pass unchanged.
    """
    sums = backward_sums(model, loss_fn, micro_batches, autocast_dtype)
    require_loss_tokens(sums.loss_tokens)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(sums.loss_tokens)
    return per_token(sums)


def backward_sums(
    model: torch.nn.Module,
    loss_fn: LossFn,
    micro_batches: Iterable[Batch],
    autocast_dtype: torch.dtype | None = None,
    gradient_sync: Callable[[bool], AbstractContextManager[Any]] | None = None,
) -> StepTotals:
    """Backpropagate every micro-batch's loss *sum* into `.grad`; returns the sums (loss and
    parts not yet divided by the tokens). `gradient_sync(is_last)`: a context around each
    backward pass (a distributed wrapper synchronises gradients on the last one only)."""
    device = next(model.parameters()).device
    loss_sum, loss_tokens, input_tokens = 0.0, 0, 0
    parts: dict[str, float] = {}
    for batch, is_last in _with_last(micro_batches):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        autocast = (
            torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
        )
        with gradient_sync(is_last) if gradient_sync else nullcontext():
            with autocast:
                out = loss_fn(model, batch)
            if out.loss_sum.requires_grad:
                out.loss_sum.backward()
        loss_sum += out.loss_sum.item()
        loss_tokens += out.tokens
        input_tokens += _input_tokens(batch, out.tokens)
        for name, value in out.parts.items():
            parts[name] = parts.get(name, 0.0) + value
    return StepTotals(loss_sum, parts, loss_tokens, input_tokens)


def require_loss_tokens(loss_tokens: float) -> None:
    if loss_tokens == 0:
        raise UserError(
            "a training step has no loss tokens: every label/target of its batch is masked"
        )


def per_token(sums: StepTotals) -> StepTotals:
    """The loss and parts of `sums` divided by its loss tokens."""
    parts = {name: value / sums.loss_tokens for name, value in sums.parts.items()}
    return sums._replace(loss=sums.loss / sums.loss_tokens, parts=parts)


def _with_last(items: Iterable[Batch]) -> Iterator[tuple[Batch, bool]]:
    """Each item with whether it is the last, reading one ahead (micro-batches stay lazy)."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


def _input_tokens(batch: Batch, fallback: int) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if "input_ids" in batch:
        return batch["input_ids"].numel()
    return fallback


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
    average = None
    if ema_decay is not None:
        average = load_average(source, model) if source else fresh_average(model)
    selection = load_selection(source, state) if select_by else None
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
                if average is not None:
                    update_average(average, model, ema_decay, step + 1)
                scored = selection is not None and (
                    (step + 1) % select_every == 0 or step + 1 == steps
                )
                if scored:
                    record["validation"] = consider(selection, model, average, step + 1, select_by)
                records.append(record)
                log.write(record)
                stop = bool(on_step and on_step(step + 1, record))
                done = stop or step + 1 == steps
                if selection is not None and done and not scored:
                    consider(selection, model, average, step + 1, select_by)
                if average is not None and done:
                    copy_average_into(model, average)
                if selection is not None and done:
                    copy_average_into(model, selection.weights)
                    if run_dir:
                        write_selection(run_dir, selection)
                if checkpoints and (done or (step + 1) % checkpoint_every == 0):
                    state = {
                        "step": step + 1,
                        "next_micro_batch": position,
                        "finished": done,
                        "settings": settings,
                    }
                    if selection is not None:
                        state["selection"] = selection.state()
                    save_training_state(
                        checkpoints, model, optimizer, state, keep_checkpoints, average, selection
                    )
                if stop:
                    break
    finally:
        if gradient_checkpointing:
            model.activation_checkpointing_disable()
        model.eval()
    return records


def optimizer_step(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    micro_batches: Iterable[Batch],
    lr: float,
    grad_clip: float | None,
    autocast_dtype: torch.dtype | None,
) -> dict[str, float]:
    """One update from the accumulated micro-batches; returns its log record (without the step)."""
    started = time.perf_counter()
    model.train()  # an `on_step` hook may have evaluated the model
    for group in optimizer.param_groups:
        group["lr"] = lr
    totals = accumulate_gradients(model, loss_fn, micro_batches, autocast_dtype)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_record(totals, lr, float(grad_norm), started)


def step_record(
    totals: StepTotals, lr: float, grad_norm: float, started: float
) -> dict[str, float]:
    """The log record of one update (without the step), timed from `started`."""
    clashing = set(totals.parts) & set(RECORD_KEYS)
    if clashing:
        raise ValueError(f"loss parts may not be named {sorted(clashing)}")
    return {
        "loss": totals.loss,
        **totals.parts,
        "lr": lr,
        "grad_norm": grad_norm,
        "loss_tokens": totals.loss_tokens,
        "tokens_per_s": totals.input_tokens / (time.perf_counter() - started),
    }
