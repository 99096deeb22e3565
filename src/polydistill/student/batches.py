"""Batches of the student's training rows: distilled rows with their targets, or plain
fine-tuning rows, for `train.train`.

    batch_at = distillation_batches(rows, pad_id, batch_size=64, seed=0)
    batch_at(i)   # the i-th batch: ids, labels on the answer tokens, the targets of those positions

`plan_batches` picks, for one model of the run (`plans.ModelPlan`), its batches and its loss:
distillation rows and the fused loss (`loss.distillation_loss`), the chosen answers as labels
(`seqkd`), or the gold answers (the oracle).
"""

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from polydistill.chat import batch_rows, pad_right, supervised_batches
from polydistill.config import RunConfig
from polydistill.student.loss import IGNORE, distillation_loss, prompt_labels
from polydistill.student.plans import ModelPlan
from polydistill.student.prompts import Prompts
from polydistill.student.rows import TrainingRows
from polydistill.train import Batch, BatchFn, LossFn, sft_loss


def distillation_batches(
    data: TrainingRows,
    pad_id: int,
    batch_size: int,
    seed: int,
    buckets: int = 1,
    first_rows: Sequence[int] = (),
    first_batches: int = 0,
    prompt_weights: Sequence[float] | None = None,
) -> BatchFn:
    """`batch_at(i)`: the i-th (micro-)batch of rows (a pure function of `seed` and `i`, see
    `chat.batch_rows`, also for the curriculum of `first_rows` / `first_batches`), with labels on
    the completion tokens and the targets of those positions, in the same row-major order; with
    `prompt_weights` (one per row of `data`), each batch row's weight as `prompt_weights`."""
    if prompt_weights is not None and len(prompt_weights) != len(data):
        raise ValueError(f"{len(prompt_weights)} prompt weights for {len(data)} rows")
    rows_of = batch_rows(data.lengths(), batch_size, seed, buckets, first_rows, first_batches)

    def batch_at(index: int) -> Batch:
        chosen = rows_of(index)
        prompts, answers, targets = data.take(chosen)
        whole = [p + a for p, a in zip(prompts, answers, strict=True)]
        input_ids, attention_mask = pad_right(whole, pad_id)
        labels = torch.full_like(input_ids, IGNORE)
        for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            labels[row, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "target_ids": targets.ids,
            "target_logprobs": targets.logprobs,
            "target_tail": targets.tail,
            "target_mask": targets.mask,
        }
        if prompt_weights is not None:
            batch["prompt_weights"] = torch.tensor([float(prompt_weights[r]) for r in chosen])
        return batch

    return batch_at


def with_prompt_labels(batches: BatchFn) -> BatchFn:
    """`batches` (with `prompt_weights`) for `sft_loss` that also learns the prompts, as
    `supervised_batches` does with its `prompt_weight`: the prompt tokens of rows weighted > 0
    join the labels, at their row's weight (`label_weights`)."""

    def batch_at(index: int) -> Batch:
        batch = batches(index)
        weights = batch.pop("prompt_weights", None)
        if weights is None or not bool((weights > 0).any()):
            return batch
        prompt = prompt_labels(batch)
        on_prompt = (prompt != IGNORE) & (weights > 0)[:, None]
        return {
            **batch,
            "labels": torch.where(on_prompt, prompt, batch["labels"]),
            "label_weights": torch.where(on_prompt, weights[:, None], 1.0),
        }

    return batch_at


def plan_batches(
    cfg: RunConfig,
    plan: ModelPlan,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    data: TrainingRows | None,
) -> tuple[BatchFn, LossFn]:
    """The batches and loss one model trains on (`data`: its rows; None for the oracle)."""
    s, t = cfg.student, cfg.student.train
    first, steps = (s.curriculum.first, s.curriculum.steps) if s.curriculum else ([], 0)
    weights = [s.prompt_weight_of(tag) for tag in prompts.tags]
    if plan.sft == "gold":
        rows = [i for i, tag in enumerate(prompts.tags) if tag in first]
        batches = supervised_batches(
            tokenizer, prompts.texts, prompts.gold, t.batch_size, t.seed, "oracle",
            prompt_weight=weights, buckets=t.buckets, first_rows=rows, first_batches=steps,
        )  # fmt: skip
        return batches, sft_loss
    rows = [r for r, i in enumerate(data.prompt_of) if prompts.tags[i] in first]
    row_weights = [weights[i] for i in data.prompt_of] if any(weights) else None
    batches = distillation_batches(
        data, tokenizer.pad_token_id, t.batch_size, t.seed, t.buckets, rows, steps, row_weights
    )
    if plan.sft == "chosen":
        return with_prompt_labels(batches), sft_loss
    return batches, distillation_loss(s.loss, s.beta, s.temperature, s.ce_weight, len(tokenizer))
