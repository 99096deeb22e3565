"""The training-path distillation loss: fused with the student's lm_head, chunked over positions.

`distill_loss(hidden [N, H], lm_head_weight [V', H], targets, kind, ...)` returns the same scalar
as `reference.reference_distill_loss(hidden @ lm_head_weight.T, targets, ...)` without ever holding
the `[N × V]` student logits. Positions are processed in chunks whose size comes from
`memory_budget_mb` (the logits chunk plus the elementwise temporaries); by default the budget is a
share of the lm_head gradient the step returns anyway (`default_memory_budget_mb`), so the loss
adds a fixed fraction to the memory of an ordinary backward at every vocabulary and width. Each
chunk is projected once; its softmax statistics, loss and gradient with respect to its logits are
computed in the same pass, in place in the chunk buffer, and only the two gradient matrix products
remain (grad_hidden = G W, grad_W += Gᵀ h). So the whole step costs the three lm_head products of
an ordinary forward + backward, and the gradients are ready when the forward returns; `backward`
only scales them. They are not computed under `torch.no_grad()` or when neither input needs a
gradient.

Positions that count in neither part of the loss are skipped. Padding lm_head rows (past
`vocab_size`) are never projected and get zero gradient. Logits and the loss are computed in
float32 (float64 inputs stay float64); half-precision inputs are upcast (the lm_head once per
call, hidden states per chunk) and their gradients cast back. See `reference` for the definition of
every kind, the tail bucket and the temperature.
"""

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import torch

from polydistill.errors import UserError
from polydistill.losses.divergences import (
    LOG_PROB_FLOOR,
    bucket_terms_and_grads,
    check_divergence_args,
    floor_log_probs,
)
from polydistill.losses.full_vocab import COMPILE_MIN_ELEMENTS, run_full_vocab_step
from polydistill.losses.positions import PositionWeights, position_weights
from polydistill.targets import SparseTargets, real_vocab_size

# The default budget, as a share of the float32 lm_head gradient [V, H]: the step's memory stays
# within 1.2x the gradient it must return, which keeps it under 0.1x the dense loss's at 512 tokens
# (benchmarks/loss.py). The chunk then holds about 0.17·H rows (~90 at H = 512) at every
# vocabulary. More rows make the lm_head products faster, with diminishing returns (measured at
# 151,936 × 512 tokens on 2 cores: 89 rows 4.8 s, 193 rows 4.3 s); below ~64 much slower.
BUDGET_SHARE_OF_LM_HEAD_GRAD = 0.2
MIN_MEMORY_BUDGET_MB = 16.0
MAX_MEMORY_BUDGET_MB = 1024.0

# Elementwise temporaries of a full-vocabulary (k = V) sub-chunk, in logits-sized rows: eager,
# the floored teacher log-probs, the term, the gradient and the JSD/skew mixture with its
# scratch; compiled, the returned gradient and one more (measured).
FULL_VOCAB_TEMPORARIES = {False: 8, True: 2}
# The share of the budget the sub-chunk temporaries get when there are any.
TEMPORARIES_SHARE = 0.125
# With a temperature and a cross-entropy part, the untempered softmax needs its own rows.
TEMPERED_CE_TEMPORARIES = 2


class LossParts(NamedTuple):
    """The loss (differentiable) and its two parts (detached, for logging)."""

    total: torch.Tensor
    divergence: torch.Tensor
    cross_entropy: torch.Tensor


@dataclass(frozen=True)
class _Step:
    """Everything one call needs besides the two differentiable inputs."""

    targets: SparseTargets
    weights: PositionWeights
    kind: str
    beta: float
    alpha: float
    temperature: float
    ce_weight: float
    vocab: int
    active: torch.Tensor | None  # rows that count somewhere; None = all
    chunk_rows: int
    sub_rows: int
    compiled: bool  # run the full-vocabulary kernel through torch.compile


def distill_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: SparseTargets,
    kind: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    alpha: float = 0.1,
    vocab_size: int | None = None,
    reduction: str = "mean",
    memory_budget_mb: float | None = None,
    compile: bool | None = None,
) -> torch.Tensor:
    """Scalar loss of the student's hidden states `[N, H]` against sparse teacher targets."""
    return distill_loss_parts(
        hidden, lm_head_weight, targets, kind, beta, temperature, ce_weight, labels,
        ignore_index, alpha, vocab_size, reduction, memory_budget_mb, compile,
    ).total  # fmt: skip


def distill_loss_parts(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: SparseTargets,
    kind: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    alpha: float = 0.1,
    vocab_size: int | None = None,
    reduction: str = "mean",
    memory_budget_mb: float | None = None,
    compile: bool | None = None,
) -> LossParts:
    """`distill_loss` with its divergence and cross-entropy parts.

    `memory_budget_mb`: memory for the logits chunk and its temporaries; None is
    `default_memory_budget_mb(V, H)`. `compile`: run the full-vocabulary kernel through
    torch.compile; None decides by size (`full_vocab.COMPILE_MIN_ELEMENTS`). Sparse (k < V)
    targets never need it.
    """
    check_divergence_args(kind, beta, alpha, temperature)
    if hidden.ndim != 2 or lm_head_weight.ndim != 2 or hidden.shape[1] != lm_head_weight.shape[1]:
        raise UserError(
            f"hidden {tuple(hidden.shape)} and lm_head weight {tuple(lm_head_weight.shape)} "
            "must be [N, H] and [V, H]"
        )
    if hidden.shape[0] != len(targets):
        raise UserError(f"{hidden.shape[0]} hidden states but {len(targets)} target positions")
    rows = lm_head_weight.shape[0]
    vocab = real_vocab_size(rows, rows, vocab_size, "student lm_head")
    if memory_budget_mb is None:
        memory_budget_mb = default_memory_budget_mb(vocab, hidden.shape[1])
    if not memory_budget_mb > 0:
        raise UserError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    weights = position_weights(targets, vocab, ce_weight, labels, ignore_index, reduction)
    step = _plan(
        targets, weights, kind, beta, alpha, temperature, ce_weight, vocab, memory_budget_mb,
        compile,
    )  # fmt: skip
    wants = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    total, divergence, cross_entropy = _FusedDistillLoss.apply(hidden, lm_head_weight, step, wants)
    return LossParts(total, divergence, cross_entropy)


def _plan(
    targets, weights, kind, beta, alpha, temperature, ce_weight, vocab, memory_budget_mb, compile
) -> _Step:
    """Which rows to project, in what chunks, with which kernel."""
    counted = (weights.divergence > 0) | (weights.cross_entropy > 0)
    active = None if bool(counted.all()) else counted.nonzero().squeeze(1)
    n_active = len(targets) if active is None else active.numel()
    if compile is None:
        compile = n_active * vocab >= COMPILE_MIN_ELEMENTS
    compile = compile and weights.full_vocabulary
    temporaries = FULL_VOCAB_TEMPORARIES[compile] if weights.full_vocabulary else 0
    if temperature != 1.0 and ce_weight > 0.0:
        temporaries += TEMPERED_CE_TEMPORARIES
    chunk_rows, sub_rows = chunk_sizes(vocab, temporaries, memory_budget_mb, max(n_active, 1))
    return _Step(
        targets, weights, kind, beta, alpha, temperature, ce_weight, vocab, active,
        chunk_rows, sub_rows, compile,
    )  # fmt: skip


def default_memory_budget_mb(vocab: int, hidden_size: int) -> float:
    """`BUDGET_SHARE_OF_LM_HEAD_GRAD` of the float32 lm_head gradient, within the bounds."""
    gradient_mb = vocab * hidden_size * 4 / 2**20
    share = BUDGET_SHARE_OF_LM_HEAD_GRAD * gradient_mb
    return min(MAX_MEMORY_BUDGET_MB, max(MIN_MEMORY_BUDGET_MB, share))


def chunk_sizes(
    vocab: int, temporaries: int, memory_budget_mb: float, rows: int
) -> tuple[int, int]:
    """Rows per projected chunk and per elementwise sub-chunk that fit the budget.

    Without temporaries the whole budget holds the chunk's float32 logits; otherwise
    `TEMPORARIES_SHARE` of it holds the sub-chunk's temporaries and the rest the chunk.
    """
    budget = memory_budget_mb * 2**20
    row_bytes = 4 * vocab
    if temporaries == 0:
        chunk = sub = int(budget // row_bytes)
    else:
        chunk = int(budget * (1 - TEMPORARIES_SHARE) // row_bytes)
        sub = int(budget * TEMPORARIES_SHARE // (temporaries * row_bytes))
    chunk = max(1, min(chunk, rows))
    return chunk, max(1, min(sub, chunk))


def even_splits(rows: int, most: int) -> list[tuple[int, int]]:
    """`rows` cut into the fewest pieces of at most `most` rows, as even as possible, so that no
    tiny last piece runs a slow matrix product (or recompiles the kernel for its shape)."""
    pieces = -(-rows // most)
    if pieces == 0:
        return []
    return list(itertools.pairwise(i * rows // pieces for i in range(pieces + 1)))


class _FusedDistillLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, step, wants_grad):
        total, divergence, cross_entropy, grad_hidden, grad_weight = _loss_and_grads(
            hidden,
            weight,
            step,
            wants_grad and ctx.needs_input_grad[0],
            wants_grad and ctx.needs_input_grad[1],
        )
        ctx.grads = (grad_hidden, grad_weight)
        ctx.mark_non_differentiable(divergence, cross_entropy)
        return total, divergence, cross_entropy

    @staticmethod
    def backward(ctx, grad_total, _grad_divergence, _grad_cross_entropy):
        if ctx.grads is None:
            raise RuntimeError("distill_loss: one backward per forward (its gradients are spent)")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None  # scaled in place below: no second [V, H] copy
        return _scaled(grad_hidden, grad_total), _scaled(grad_weight, grad_total), None, None


def _scaled(grad: torch.Tensor | None, factor: torch.Tensor) -> torch.Tensor | None:
    if grad is None or bool(factor == 1):  # the usual loss.backward(): skip a pass over [V, H]
        return grad
    return grad.mul_(factor.to(grad.dtype))


def _loss_and_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    step: _Step,
    wants_hidden_grad: bool,
    wants_weight_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    compute = hidden.dtype if hidden.dtype == torch.float64 else torch.float32
    head = weight[: step.vocab]
    if head.dtype != compute:
        head = head.to(compute)  # one upcast per call, not per chunk
    n_active = hidden.shape[0] if step.active is None else step.active.numel()
    # Rows no chunk writes must be zero: skipped positions, padding rows, or all with no chunks.
    partial = step.active is not None or n_active == 0
    grad_hidden = _gradient(hidden.shape, compute, wants_hidden_grad, zero=partial)
    grad_weight = _gradient(weight.shape, compute, wants_weight_grad, zero=n_active == 0)
    if grad_weight is not None:
        grad_weight[step.vocab :].zero_()
    buffer = torch.empty(step.chunk_rows, step.vocab, dtype=compute)
    sums = torch.zeros(2, dtype=torch.float64)
    for index, (start, stop) in enumerate(even_splits(n_active, step.chunk_rows)):
        rows = slice(start, stop) if step.active is None else step.active[start:stop]
        chunk_hidden = hidden[rows].to(compute)
        logits = buffer[: stop - start]
        torch.mm(chunk_hidden, head.t(), out=logits)
        for sub_start, sub_stop in even_splits(stop - start, step.sub_rows):
            sub_rows = _sub(rows, sub_start, sub_stop)
            sums += _logit_grads_in_place(logits[sub_start:sub_stop], sub_rows, step)
        if grad_hidden is not None:
            if isinstance(rows, slice):
                torch.mm(logits, head, out=grad_hidden[rows])
            else:
                grad_hidden[rows] = logits @ head
        if grad_weight is not None:
            if index == 0:  # written, not added: saves zeroing a [V, H] tensor
                torch.mm(logits.t(), chunk_hidden, out=grad_weight[: step.vocab])
            else:
                grad_weight[: step.vocab].addmm_(logits.t(), chunk_hidden)
    divergence, cross_entropy = sums[0], sums[1]
    total = (1.0 - step.ce_weight) * divergence + step.ce_weight * cross_entropy
    out = hidden.dtype
    return (
        total.to(out), divergence.to(out), cross_entropy.to(out),
        None if grad_hidden is None else grad_hidden.to(hidden.dtype),
        None if grad_weight is None else grad_weight.to(weight.dtype),
    )  # fmt: skip


def _gradient(shape, dtype, wanted: bool, zero: bool) -> torch.Tensor | None:
    if not wanted:
        return None
    return torch.zeros(shape, dtype=dtype) if zero else torch.empty(shape, dtype=dtype)


def _sub(rows: slice | torch.Tensor, start: int, stop: int) -> slice | torch.Tensor:
    if isinstance(rows, slice):
        return slice(rows.start + start, rows.start + stop)
    return rows[start:stop]


def _logit_grads_in_place(
    logits: torch.Tensor, rows: slice | torch.Tensor, step: _Step
) -> torch.Tensor:
    """Loss sums (divergence, cross-entropy) of these rows; `logits` become d loss / d logits."""
    weights, targets = step.weights, step.targets
    dtype = logits.dtype
    # d total / d logits: the divergence sees logits / T; both parts are mixed by ce_weight.
    mix = (1.0 - step.ce_weight) / step.temperature
    divergence_scale = weights.divergence[rows].to(dtype) * mix
    ce_weights = weights.cross_entropy[rows].to(dtype)
    ce_scale = ce_weights * step.ce_weight
    labels = weights.labels[rows][:, None]
    with_ce = step.ce_weight > 0.0 and bool((ce_scale > 0).any())
    counted = targets.mask[rows]
    logprobs = targets.logprobs[rows].to(dtype)
    if not bool(counted.all()):  # rows kept only for the cross-entropy may hold anything
        logprobs = torch.where(counted[:, None], logprobs, 0.0)
    cross_entropy = torch.zeros((), dtype=dtype)
    untempered_probs = None
    if with_ce and step.temperature != 1.0:
        log_norm = logits.logsumexp(dim=1)
        cross_entropy = (log_norm - logits.gather(1, labels).squeeze(1)).mul_(ce_weights).sum()
        untempered_probs = (logits - log_norm[:, None]).exp_().mul_(ce_scale[:, None])
        logits.div_(step.temperature)
    elif step.temperature != 1.0:
        logits.div_(step.temperature)
    # With T = 1 the cross-entropy softmax is the divergence's: pass its scale to share it.
    shared_ce = ce_scale if with_ce and untempered_probs is None else None
    if weights.full_vocabulary:
        label_logits = logits.gather(1, labels).squeeze(1)
        ce_part = torch.zeros_like(divergence_scale) if shared_ce is None else shared_ce
        divergences, log_norm, grad = run_full_vocab_step(
            logits, logprobs, divergence_scale, ce_part, step.kind, step.beta, step.alpha,
            compiled=step.compiled,
        )  # fmt: skip
        logits.copy_(grad)
        del grad
    else:
        divergences, label_logits, log_norm = _sparse_in_place(
            logits, targets.ids[rows], logprobs, targets.tail[rows].to(dtype), step,
            divergence_scale, shared_ce, labels,
        )  # fmt: skip
    if shared_ce is not None:
        cross_entropy = ((log_norm - label_logits) * ce_weights).sum()
    if untempered_probs is not None:
        logits.add_(untempered_probs)
    if with_ce:
        logits.scatter_add_(1, labels, -ce_scale[:, None])
    divergence = torch.where(counted, divergences, 0.0).double() @ weights.divergence[rows]
    return torch.stack([divergence, cross_entropy.double()])


def _sparse_in_place(logits, ids, logprobs, tail, step, divergence_scale, ce_scale, labels):
    """Top-k targets plus a tail bucket. Returns (divergences, label logits, log normaliser);
    `logits` (already divided by T) become the gradient."""
    label_logits = logits.gather(1, labels).squeeze(1) if ce_scale is not None else None
    top_logits = logits.gather(1, ids)
    peak = logits.amax(dim=1, keepdim=True)
    exps = logits.sub_(peak).exp_()
    total_mass = exps.sum(1)
    has_tail = ids.shape[1] < step.vocab
    # Unused slots (log-prob -inf, k < V) are part of the tail bucket (see `reference`).
    in_tail = (logprobs == float("-inf")) if has_tail else None
    if in_tail is not None and bool(in_tail.any()):
        exps.scatter_(1, ids, torch.where(in_tail, exps.gather(1, ids), 0.0))
    else:
        in_tail = None
        exps.scatter_(1, ids, 0.0)
    outside_mass = exps.sum(1)  # relative to the peak, like total_mass
    log_norm = peak.squeeze(1) + total_mass.log()
    log_q = top_logits - log_norm[:, None]
    log_p = floor_log_probs(logprobs)
    if has_tail:
        # Floored like the teacher's so the tail terms stay finite; the gradient below is that of
        # the unfloored loss (the dense reference's autograd would give 0 below e^-87).
        log_q_tail = (outside_mass.log() - total_mass.log()).clamp_min(LOG_PROB_FLOOR)
        log_p_tail = floor_log_probs(tail.log())
        log_q = torch.cat([log_q, log_q_tail[:, None]], dim=1)
        log_p = torch.cat([log_p, log_p_tail[:, None]], dim=1)
    terms, grads = bucket_terms_and_grads(step.kind, log_q, log_p, step.beta, step.alpha)
    if in_tail is not None:
        slots = torch.cat([in_tail, in_tail.new_zeros(len(in_tail), 1)], dim=1)
        terms, grads = terms.masked_fill_(slots, 0.0), grads.masked_fill_(slots, 0.0)
    grad_sum = grads.sum(1)
    # Outside the top-k: q_j = exps_j / total_mass, and the tail bucket's share of it.
    outside = -grad_sum / total_mass
    if has_tail:
        per_outside = torch.where(outside_mass > 0, grads[:, -1] / outside_mass, 0.0)
        outside = outside + per_outside
    outside = outside * divergence_scale
    top_probs = log_q[:, : ids.shape[1]].exp()
    top = (grads[:, : ids.shape[1]] - top_probs * grad_sum[:, None]) * divergence_scale[:, None]
    if ce_scale is not None:
        outside = outside + ce_scale / total_mass
        top = top + top_probs * ce_scale[:, None]
    exps.mul_(outside[:, None])
    if in_tail is not None:  # their gradient is the one of the other tail tokens, already there
        top = torch.where(in_tail, exps.gather(1, ids), top)
    exps.scatter_(1, ids, top)
    return terms.sum(1), label_logits, log_norm
