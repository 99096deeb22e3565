"""The student's fused distillation loss.

    train(student, distillation_batches(data, pad_id, 64, seed),   # student.batches
          distillation_loss("forward_kl", beta=0.5, temperature=1.0, ce_weight=0.0,
                            vocab_size=len(tokenizer)), steps=..., lr=...)

The rows (`student.targets.DistillationData`) hold prompt and answer ids in the student's
rendering and, at every position that predicts an answer token, the fused teacher target. The
student's decoder runs to its final hidden states, the answer positions are picked, and the
chunked `losses.distill_loss_parts` (fused with the lm_head, summed over positions) gives the
loss, so the `[tokens x vocab]` student logits never exist. Positions whose target is masked
out (no teacher's distribution fits the student's context there) count only in the
cross-entropy part, and only when `ce_weight` > 0. With per-row `prompt_weights` (a row's > 0)
the student is also a language model of the prompts (cross-entropy on each prompt token after
the first, per token its row's weight times an answer token's loss): prompts are the one text a
label-free run has, and the world's teachers learn theirs the same way. The weight is per row so
that it can differ by tag: the prompts of some tags carry language worth learning, others
random digits.
"""

import torch
from transformers import PreTrainedModel

from polydistill.errors import UserError
from polydistill.losses import distill_loss_parts
from polydistill.targets import SparseTargets
from polydistill.train import Batch, LossFn, LossOutput

IGNORE = -100


def prompt_labels(batch: Batch) -> torch.Tensor:
    """Labels of the prompt tokens after the first (IGNORE elsewhere): in a row of
    `distillation_batches`, the attended tokens before its first answer label."""
    labels, input_ids = batch["labels"], batch["input_ids"]
    before_answer = (labels != IGNORE).cumsum(-1) == 0
    prompt = before_answer & batch["attention_mask"].bool()
    prompt[:, 0] = False
    return torch.where(prompt, input_ids, IGNORE)


def final_hidden_states(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The decoder's output after its final norm: what the lm_head multiplies, `[B, T, H]`."""
    decoder = model.get_decoder()
    return decoder(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state


def fused_head_weight(model: PreTrainedModel) -> torch.Tensor:
    """The lm_head weight, for a model whose logits are exactly `hidden @ weight.T`."""
    if getattr(model.config, "final_logit_softcapping", None):
        raise UserError(
            f"student {type(model).__name__}: final_logit_softcapping is set, so its logits are "
            "not the lm_head product the fused loss computes; build it without soft-capping"
        )
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise UserError(f"student {type(model).__name__}: an lm_head with a bias is not supported")
    return head.weight


def _prompt_cross_entropy(
    hidden: torch.Tensor, head: torch.Tensor, prompt_labels: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """Summed cross-entropy of the prompt tokens, by the same memory-flat kernel (no targets)."""
    counted = prompt_labels != IGNORE
    rows = int(counted.sum())
    no_targets = SparseTargets(
        torch.zeros(rows, 1, dtype=torch.long),
        torch.zeros(rows, 1, dtype=hidden.dtype),
        torch.zeros(rows, dtype=hidden.dtype),
        torch.zeros(rows, dtype=torch.bool),
    )
    # ce_weight 1 and every target masked: the total is all cross-entropy.
    return distill_loss_parts(
        hidden[counted], head, no_targets, ce_weight=1.0, labels=prompt_labels[counted],
        vocab_size=vocab_size, reduction="sum",
    ).total  # fmt: skip


def distillation_loss(
    kind: str,
    beta: float,
    temperature: float,
    ce_weight: float,
    vocab_size: int,
) -> LossFn:
    """`loss_fn(model, batch)` for `train`: the summed divergence (and cross-entropy on the
    teacher's completion tokens, weighted `ce_weight`) over the batch's completion positions,
    plus, with `prompt_weights` in the batch, each row's weight times the summed cross-entropy
    of its prompt tokens."""

    def loss_fn(model: PreTrainedModel, batch: Batch) -> LossOutput:
        hidden = final_hidden_states(model, batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"][:, 1:]
        counted = labels != IGNORE
        rows = hidden[:, :-1][counted]
        head = fused_head_weight(model)
        targets = SparseTargets(
            batch["target_ids"],
            batch["target_logprobs"],
            batch["target_tail"],
            batch["target_mask"],
        )
        parts = distill_loss_parts(
            rows,
            head,
            targets,
            kind,
            beta=beta,
            temperature=temperature,
            ce_weight=ce_weight,
            labels=labels[counted],
            vocab_size=vocab_size,
            reduction="sum",
        )
        logged = {
            "divergence": float(parts.divergence),
            "cross_entropy": float(parts.cross_entropy),
        }
        total = parts.total
        weights = batch.get("prompt_weights")
        if weights is not None:
            prompts = prompt_labels(batch)[:, 1:]
            unweighted = 0.0  # logged even for a batch without weighted rows: no gaps in curves
            for weight in weights[weights > 0].unique().tolist():  # one kernel call per weight
                alike = weights == weight
                prompt = _prompt_cross_entropy(hidden[alike, :-1], head, prompts[alike], vocab_size)
                unweighted += float(prompt.detach())
                total = total + weight * prompt
            logged["prompt_cross_entropy"] = unweighted
        return LossOutput(total, rows.shape[0], logged)

    return loss_fn
