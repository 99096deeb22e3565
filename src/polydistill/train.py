"""The training loop: plain PyTorch, read top to bottom.

    log = train(model, batches, sft_loss, steps=1000, lr=3e-3, ...)

`batches` yields dicts of tensors; `loss_fn(model, batch)` returns the mean loss of that batch and
a dict of named parts for the log. AdamW with warmup and a cosine decay to `min_lr_ratio · lr`,
gradient clipping. The loop knows nothing of teachers: supervised fine-tuning of the world's
teachers and distillation of students both come through `loss_fn`.
"""

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import PreTrainedModel

Batch = dict[str, torch.Tensor]
LossFn = Callable[[PreTrainedModel, Batch], tuple[torch.Tensor, dict[str, float]]]
StepHook = Callable[[int, dict[str, float]], bool | None]


def cosine_lr(step: int, steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr_ratio · lr` at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def sft_loss(model: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean cross-entropy on the label positions (-100 elsewhere)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100
    )
    return loss, {"ce": loss.item()}


def train(
    model: PreTrainedModel,
    batches: Iterator[Batch],
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    log_path: Path | None = None,
    on_step: StepHook | None = None,
) -> list[dict[str, float]]:
    """Run up to `steps` optimiser steps, fewer if `on_step` returns True; one record per step."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
    )
    model.train()
    records: list[dict[str, float]] = []
    log = log_path.open("a", encoding="utf-8") if log_path else None
    try:
        for step in range(steps):
            started = time.perf_counter()
            batch = next(batches)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, steps, lr, warmup_steps, min_lr_ratio)
            loss, parts = loss_fn(model, batch)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens = int(batch["attention_mask"].sum())
            record = {
                "step": step + 1,
                "loss": loss.item(),
                **parts,
                "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": float(grad_norm),
                "tokens_per_s": tokens / (time.perf_counter() - started),
            }
            records.append(record)
            if log:
                log.write(json.dumps(record) + "\n")
            if on_step and on_step(step + 1, record):
                break
    finally:
        if log:
            log.close()
    model.eval()
    return records
