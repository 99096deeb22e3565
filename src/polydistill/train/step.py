"""One optimiser step of the training loop, over micro-batches (`train.loop` runs the steps;
`train.distributed_loop` spreads the same step over processes).

    totals = accumulate_gradients(model, loss_fn, micro_batches, autocast_dtype=None)
    record = optimizer_step(model, optimizer, loss_fn, micro_batches, lr, grad_clip, None)

A loss function returns the *sum* of its loss over the tokens it counts and their number
(`LossOutput`); a step backpropagates every micro-batch's sum and divides the gradients by the
step's total token count, so 4 micro-batches of B/4 give the gradient of one batch of B even
when they hold different numbers of tokens.
"""

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel

from polydistill.errors import UserError

RECORD_KEYS = ("step", "loss", "lr", "grad_norm", "loss_tokens", "tokens_per_s", "validation")
"""The keys a step's log record has besides the loss's named parts."""

Batch = dict[str, torch.Tensor]
BatchFn = Callable[[int], Batch]


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
