"""Dense references of the distillation losses (autograd, full `[tokens × vocab]` logits).

- `divergence(student_logits, teacher_logits, kind, ...)`: full teacher logits against full
  student logits, both at `temperature`; its `jsd` is TRL GKD's `generalized_jsd_loss` (same
  definition, token-mean reduction over positions whose label is not `ignore_index`).
- `reference_distill_loss(student_logits, targets, kind, ...)`: the dense reference of
  `chunked.distill_loss` on sparse targets (same arguments, but full student logits instead of
  hidden states and lm_head).

Sparse targets and the tail. A position's teacher distribution is its top-k ids plus one tail
bucket holding the mass `tail` outside them. The student's distribution is grouped the same way:
its probabilities of the k ids, and one bucket with all its mass outside them. Every kind is then
computed over these k + 1 buckets (for k = V there is no tail bucket and this is the ordinary
divergence). Grouping can only lose information, so for k < V each kind is a lower bound of the
full-vocabulary one, and the student is still pushed to put exactly `tail` outside the top-k.

Unused slots. For k < V a row may list ids with log-prob -inf (the cross-tokenizer projection pads
rows with fewer than k distinct ids). Such an id is a zero-probability token the teacher did not
really rank: it is no bucket of its own but part of the rest of the vocabulary, so the student's
mass on it goes to the tail bucket. (For k = V there is no tail: a -inf entry is then an ordinary
token of probability zero, its own bucket.)

Temperature. For `divergence` it divides both models' logits, as TRL. Sparse targets are already
a distribution, so `reference_distill_loss`/`distill_loss` divide only the student's logits: build
the targets at the same temperature (`targets.targets_from_logits(..., temperature=T)`). The
cross-entropy part always uses the untempered student logits.

Vocabulary padding. lm_head rows (or logit columns) past the real vocabulary are padding: they are
dropped from both distributions and get no gradient. `vocab_size` names the real vocabulary; for
`divergence` it defaults to the narrower of the two logit tensors, which may then differ by at most
`targets.MAX_PADDING_ROWS` columns.
"""

import torch
import torch.nn.functional as F

from polydistill.errors import UserError
from polydistill.losses.divergences import (
    LOG_PROB_FLOOR,
    bucket_terms,
    check_divergence_args,
    floor_log_probs,
)
from polydistill.losses.positions import position_weights
from polydistill.targets import SparseTargets, check_finite_logits, real_vocab_size


def divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    ignore_index: int = -100,
    labels: torch.Tensor | None = None,
    alpha: float = 0.1,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Token-mean divergence between full student and teacher logits `[..., V]` (dense reference).

    A position counts when `mask` is true there (if given) and its label is not `ignore_index`
    (if `labels` are given). `beta` is the JSD mixture weight, `alpha` the skew-KL one.
    """
    check_divergence_args(kind, beta, alpha, temperature)
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise UserError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} cover different positions"
        )
    columns_s, columns_t = student_logits.shape[-1], teacher_logits.shape[-1]
    vocab = real_vocab_size(columns_s, columns_t, vocab_size, "student vs teacher logits")
    student = _as_float(student_logits[..., :vocab].reshape(-1, vocab))
    teacher = _as_float(teacher_logits[..., :vocab].reshape(-1, vocab))
    if student.shape[0] == 0:
        raise UserError("divergence: empty batch (no positions)")
    check_finite_logits(teacher, "teacher logits")
    counted = torch.ones(student.shape[0], dtype=torch.bool, device=student.device)
    if mask is not None:
        counted &= mask.reshape(-1).to(torch.bool)
    if labels is not None:
        counted &= labels.reshape(-1) != ignore_index
    lq = torch.log_softmax(student / temperature, dim=-1)
    lp = floor_log_probs(torch.log_softmax(teacher / temperature, dim=-1))
    per_position = bucket_terms(kind, lq, lp, beta, alpha).sum(-1)
    return per_position[counted].sum() / counted.sum().clamp_min(1)


def reference_distill_loss(
    student_logits: torch.Tensor,
    targets: SparseTargets,
    kind: str,
    beta: float = 0.5,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    alpha: float = 0.1,
    vocab_size: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """`distill_loss` computed densely from full student logits `[N, V']` (rows past
    `vocab_size` are padding), with autograd for the gradients."""
    check_divergence_args(kind, beta, alpha, temperature)
    columns = student_logits.shape[-1]
    vocab = real_vocab_size(columns, columns, vocab_size, "student logits")
    if student_logits.ndim != 2 or student_logits.shape[0] != len(targets):
        raise UserError(
            f"student logits {tuple(student_logits.shape)} do not match {len(targets)} targets"
        )
    weights = position_weights(targets, vocab, ce_weight, labels, ignore_index, reduction)
    logits = _as_float(student_logits[:, :vocab])
    scaled = logits / temperature
    lq = torch.log_softmax(scaled, dim=-1).gather(1, targets.ids)
    counted = targets.mask[:, None]
    logprobs = torch.where(counted, targets.logprobs.to(lq.dtype), 0.0)
    lp = floor_log_probs(logprobs)
    in_tail = torch.zeros_like(counted)
    if targets.k < vocab:
        in_tail = logprobs == float("-inf")  # unused slots: part of the tail bucket
        listed = torch.where(in_tail, scaled.gather(1, targets.ids), float("-inf"))
        outside = scaled.scatter(1, targets.ids, listed)
        lq_tail = (outside.logsumexp(-1) - scaled.logsumexp(-1)).clamp_min(LOG_PROB_FLOOR)
        lp_tail = floor_log_probs(targets.tail.to(lq.dtype).log())
        lq = torch.cat([lq, lq_tail[:, None]], dim=1)
        lp = torch.cat([lp, lp_tail[:, None]], dim=1)
        in_tail = torch.cat([in_tail, torch.zeros_like(counted)], dim=1)
    terms = torch.where(in_tail, 0.0, bucket_terms(kind, lq, lp, beta, alpha))
    per_position = terms.sum(-1)
    per_position = torch.where(targets.mask, per_position, 0.0)
    cross_entropy = F.cross_entropy(logits, weights.labels, reduction="none")
    divergence_part = (per_position.double() * weights.divergence).sum()
    cross_entropy_part = (cross_entropy.double() * weights.cross_entropy).sum()
    total = (1.0 - ce_weight) * divergence_part + ce_weight * cross_entropy_part
    return total.to(logits.dtype)


def _as_float(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are upcast: a softmax over 10^5 tokens needs float32."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
