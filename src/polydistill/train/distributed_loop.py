"""The training loop over several processes (torchrun): `train.loop`'s step, spread by rows.

    # every rank, started by torchrun --nproc-per-node N:
    with process_group(DistributedConfig(strategy="ddp")) as ranks:
        torch.manual_seed(0)                       # the same initial weights on every rank
        model = build_model()
        records, model = train_distributed(model, batch_at, sft_loss, ranks=ranks,
                                           strategy="ddp", steps=1000, lr=3e-3,
                                           run_dir=Path("runs/x/student"), checkpoint_every=100)
        save_model(model, Path("runs/x/student/final"), ranks, tokenizer)

Same contract as `train.loop.train`: `batch_at(i)` is the i-th *global* micro-batch, a pure
function of `i`; each rank backpropagates the loss sums of its rows (`distributed.rank_share`);
the loss sums, token counts and parts are all-reduced, and the gradients (averaged over the ranks
by DDP / FSDP2) are scaled by world / (global tokens). So a step is the one-process step on the
same global batch — even when the ranks' rows hold different numbers of loss tokens — up to the
order of floating-point sums; so are the gradient norm, clipping and the logged loss.

Rank 0 writes `train_log.jsonl`; checkpoints are DCP (`train.sharded_checkpoint`), resumable at
another process count or strategy. Same schedule, precision, seed and settings check as the
one-process loop. Not here yet: `ema_decay` and `select_by` (use `train.loop.train`). RNG: a
fresh run seeds every rank alike; a model with dropout draws the same masks on every rank, so
its bits depend on the process count (a dropout-free model's do not).
"""

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from polydistill.errors import CollectiveFailed
from polydistill.staging import staged_folder
from polydistill.train.checkpoint import list_checkpoints, save_model_quietly
from polydistill.train.distributed import (
    Ranks,
    agree_on_checkpoints,
    agree_on_settings,
    all_sum,
    broadcast_flag,
    check_global_batch,
    rank_share,
    unwrapped,
    wrap_model,
)
from polydistill.train.log import TrainLog
from polydistill.train.loop import CHECKPOINTS_DIR, StepHook, cosine_lr, make_optimizer, start_state
from polydistill.train.settings import PRECISIONS, checked_settings
from polydistill.train.sharded_checkpoint import full_weights, restore_sharded, save_sharded
from polydistill.train.step import (
    BatchFn,
    LossFn,
    StepTotals,
    backward_sums,
    per_token,
    require_loss_tokens,
    step_record,
)

MAX_CAUSE_CHARS = 200


def train_distributed(
    model: torch.nn.Module,
    batch_at: BatchFn,
    loss_fn: LossFn,
    *,
    ranks: Ranks,
    strategy: str = "ddp",
    steps: int,
    lr: float,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    betas: tuple[float, float] = (0.9, 0.98),
    accumulation_steps: int = 1,
    precision: str = "float32",
    seed: int = 0,
    run_dir: Path | None = None,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 2,
    resume: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    on_step: StepHook | None = None,
) -> tuple[list[dict[str, float]], torch.nn.Module]:
    """Run up to `steps` optimiser steps on every rank; returns the records of this call's steps
    (the same on every rank) and the wrapped model (DDP, or the FSDP2-sharded model itself).

    `model` must hold the same weights on every rank (build it after the same seed). `on_step`
    runs on every rank; rank 0's answer decides whether all stop.
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
    )
    checkpoints = run_dir / CHECKPOINTS_DIR if run_dir and checkpoint_every else None
    with collective_failures(ranks, "starting"):
        agree_on_settings(ranks, {"settings": settings, "strategy": strategy})
        model = wrap_model(model.to(ranks.device), strategy)
        optimizer = make_optimizer(unwrapped(model), lr, weight_decay, betas)
        found = list_checkpoints(checkpoints) if checkpoints else []
        agree_on_checkpoints(ranks, checkpoints, [p.name for p in found])
        state, _ = start_state(
            model, optimizer, checkpoints, resume, settings, seed, restore_sharded
        )
        dist.barrier()  # no rank starts while rank 0 may still be clearing leftovers
    if state["finished"]:
        model.eval()
        return [], model
    check_global_batch(batch_at(state["next_micro_batch"]), ranks.world)
    records: list[dict[str, float]] = []
    position = state["next_micro_batch"]
    with TrainLog(run_dir if ranks.main else None, state["step"]) as log:
        for step in range(state["step"], steps):
            rate = cosine_lr(step, steps, lr, warmup_steps, min_lr_ratio)
            micro = (
                rank_share(batch_at(i), ranks)
                for i in range(position, position + accumulation_steps)
            )
            position += accumulation_steps
            with collective_failures(ranks, f"step {step + 1}"):
                record = {
                    "step": step + 1,
                    **distributed_step(
                        model, optimizer, loss_fn, micro, rate, grad_clip, precision, ranks
                    ),
                }
                records.append(record)
                log.write(record)
                stop = broadcast_flag(bool(on_step and on_step(step + 1, record)), ranks)
                done = stop or step + 1 == steps
                if checkpoints and (done or (step + 1) % checkpoint_every == 0):
                    saved = {
                        "step": step + 1,
                        "next_micro_batch": position,
                        "finished": done,
                        "settings": settings,
                    }
                    save_sharded(checkpoints, model, optimizer, saved, keep_checkpoints, ranks)
            if stop:
                break
    model.eval()
    return records, model


def distributed_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    micro_batches: Iterator[dict[str, torch.Tensor]],
    lr: float,
    grad_clip: float | None,
    precision: str,
    ranks: Ranks,
) -> dict[str, float]:
    """One update from this rank's shares of the step's micro-batches; its log record (global)."""
    started = time.perf_counter()
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    local = backward_sums(
        model, loss_fn, micro_batches, PRECISIONS[precision], _gradient_sync(model)
    )
    names = sorted(local.parts)
    # every rank's loss must name the same parts (a loss function's parts are fixed names)
    loss, tokens, inputs, *parts = all_sum(
        [local.loss, local.loss_tokens, local.input_tokens, *(local.parts[n] for n in names)],
        ranks.device,
    )
    tokens = int(tokens) if tokens.is_integer() else tokens  # a count, or a weight sum
    totals = StepTotals(loss, dict(zip(names, parts, strict=True)), tokens, int(inputs))
    require_loss_tokens(totals.loss_tokens)
    # DDP and FSDP2 left the mean over ranks of the gradient sums; the step wants their total
    # over the global token count.
    scale = ranks.world / totals.loss_tokens
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(scale)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    if isinstance(grad_norm, DTensor):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_record(per_token(totals), lr, float(grad_norm), started)


def _gradient_sync(model: torch.nn.Module) -> Callable[[bool], AbstractContextManager[Any]]:
    """Synchronise gradients on the last micro-batch of a step only (the rest accumulate)."""
    if isinstance(model, DistributedDataParallel):
        return lambda is_last: nullcontext() if is_last else model.no_sync()

    def fsdp_sync(is_last: bool) -> AbstractContextManager[Any]:
        model.set_requires_gradient_sync(is_last)
        return nullcontext()

    return fsdp_sync


@contextmanager
def collective_failures(ranks: Ranks, where: str) -> Iterator[None]:
    """Turn a failed collective (a rank died, or stopped answering) into one clear line."""
    try:
        yield
    except RuntimeError as error:
        # nccl raises DistError subclasses; gloo a plain RuntimeError from its transport
        # ("…gloo/transport/tcp/pair.cc… Connection reset by peer", or a timeout)
        if not isinstance(error, dist.DistError) and "gloo" not in str(error):
            raise
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CollectiveFailed(
            f"rank {ranks.rank} of {ranks.world} stopped at {where}: another rank died or did "
            f"not answer in time ({first_line[:MAX_CAUSE_CHARS]})"
        ) from error


def save_model(model: torch.nn.Module, out_dir: Path, ranks: Ranks, tokenizer: Any = None) -> Path:
    """The trained model as a standard checkpoint (`save_pretrained`, plus `tokenizer` when
    given), written by rank 0 atomically. Every rank must call it (FSDP2 gathers the shards)."""
    weights = full_weights(model)
    if ranks.main:
        with staged_folder(out_dir, replace=True) as staging:
            save_model_quietly(unwrapped(model), staging, weights)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
    dist.barrier()
    return out_dir
