"""The one target format every teacher source produces and every loss consumes.

A teacher's next-token distribution at each student position is kept sparse: the top-k token ids
(already in the *student's* vocabulary), their log-probabilities, and the probability mass outside
those k ids (`tail`), so that `exp(logprobs).sum(-1) + tail == 1`. `mask` says which positions
count in the loss. Full-vocabulary targets are the special case k = V with tail 0.

Local models, served models, the capture store and fused multi-teacher targets all end here.
"""

from dataclasses import dataclass

import torch

from polydistill.errors import UserError


@dataclass(frozen=True)
class SparseTargets:
    """Teacher targets for N positions: ids/logprobs `[N, k]`, tail/mask `[N]`."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor
    mask: torch.Tensor

    @property
    def k(self) -> int:
        return self.ids.shape[-1]

    def __len__(self) -> int:
        return self.ids.shape[0]


def tail_from_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Mass outside the kept ids; float64 so that a near-complete top-k gives ~0, not <0."""
    kept = logprobs.double().exp().sum(-1)
    return (1.0 - kept).clamp_min(0.0).to(logprobs.dtype)


MAX_PADDING_ROWS = 1024
"""Models pad their embedding/lm_head rows past the tokenizer (Qwen 151,936 vs 152,064, Gemma
262,144 vs 262,208); a larger difference means the vocabularies really differ."""


def real_vocab_size(rows: int, other_rows: int, vocab_size: int | None, what: str) -> int:
    """The vocabulary two tables share when their extra rows are only padding.

    `vocab_size` is the real vocabulary when known; otherwise the smaller table's size.
    """
    real = min(rows, other_rows) if vocab_size is None else vocab_size
    widest = max(rows, other_rows)
    if real <= 0 or real > min(rows, other_rows):
        raise UserError(
            f"{what}: vocabulary size {real} does not fit tables of {rows} and {other_rows} rows"
        )
    if widest - real > MAX_PADDING_ROWS:
        raise UserError(
            f"{what}: vocabularies of {rows} and {other_rows} rows differ by more than "
            f"{MAX_PADDING_ROWS} padding rows from the real vocabulary of {real}"
        )
    return real


def targets_from_logits(
    teacher_logits: torch.Tensor,
    k: int | None = None,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    mask: torch.Tensor | None = None,
) -> SparseTargets:
    """Targets from a teacher that shares the student's tokenizer and gives full logits `[N, V']`.

    Columns from `vocab_size` on are padding rows of the teacher's lm_head and get no mass. The
    distribution is the teacher's at `temperature`, in float32 (float64 logits stay float64).
    `k=None` (or k >= V) keeps the full vocabulary: ids are then a broadcast view of `arange(V)`
    (no memory), which the chunked loss recognises and serves without gathers.
    """
    if teacher_logits.ndim != 2 or teacher_logits.shape[0] == 0:
        raise UserError(f"teacher logits must be [N > 0, V], got {tuple(teacher_logits.shape)}")
    columns = teacher_logits.shape[1]
    vocab = real_vocab_size(columns, columns, vocab_size, "teacher logits")
    logits = teacher_logits[:, :vocab]
    if logits.dtype != torch.float64:
        logits = logits.float()  # a softmax over 10^5 tokens needs at least float32
    check_finite_logits(logits, "teacher logits")
    logprobs = accurate_log_softmax(logits, temperature)
    rows = logprobs.shape[0]
    keep = torch.ones(rows, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    if k is None or k >= vocab:
        ids = torch.arange(vocab, device=logprobs.device).expand(rows, vocab)
        return SparseTargets(ids, logprobs, torch.zeros(rows, device=logprobs.device), keep)
    top, ids = logprobs.topk(k, dim=-1)
    return SparseTargets(ids, top, tail_from_logprobs(top), keep)


LOG_SOFTMAX_BLOCK_ELEMENTS = 2**24


def accurate_log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / T) whose normaliser is summed in float64.

    torch's float32 log_softmax sums 10^5 exponentials in float32: at V = 151,936 its log-probs
    are off by up to 2e-5, the same amount in a whole row, so the targets no longer sum to 1 and
    every divergence against them is biased (by ~3e-6 relative for the JSD). Rows are done in
    blocks so the temporaries stay small.
    """
    out = torch.empty_like(logits)
    block = max(1, LOG_SOFTMAX_BLOCK_ELEMENTS // max(1, logits.shape[1]))
    for start in range(0, logits.shape[0], block):
        scaled = logits[start : start + block] / temperature
        peak = scaled.amax(dim=1, keepdim=True)
        mass = (scaled - peak).exp().sum(dim=1, keepdim=True, dtype=torch.float64)
        out[start : start + block] = scaled - (peak + mass.log()).to(scaled.dtype)
    return out


def check_finite_logits(logits: torch.Tensor, what: str) -> None:
    """NaN or +inf logits have no distribution (-inf is a token with probability zero)."""
    row_max = logits.amax(dim=-1)  # max propagates NaN: one reduction finds both
    if bool((torch.isnan(row_max) | (row_max == float("inf"))).any()):
        raise UserError(f"{what} contain NaN or +inf")


def is_full_vocabulary(ids: torch.Tensor, vocab_size: int) -> bool:
    """True when every row's ids are 0..V-1 in order: the k = V layout of `targets_from_logits`."""
    if ids.ndim != 2 or ids.shape[1] != vocab_size:
        return False
    identity = torch.arange(vocab_size, device=ids.device)
    if ids.stride(0) == 0:
        return bool(torch.equal(ids[0], identity))
    return all(torch.equal(row, identity) for row in ids)


def validate_targets(targets: SparseTargets, student_vocab: int) -> None:
    """Reject targets a loss cannot use, naming what is wrong.

    Works row-wise with reductions, so full-vocabulary targets are checked without copies.
    """
    ids, logprobs, tail, mask = targets.ids, targets.logprobs, targets.tail, targets.mask
    if ids.ndim != 2 or ids.shape != logprobs.shape:
        raise UserError(
            f"targets: ids {tuple(ids.shape)} and logprobs {tuple(logprobs.shape)} "
            "must both be [N, k]"
        )
    if tail.shape != ids.shape[:1] or mask.shape != ids.shape[:1]:
        raise UserError(f"targets: tail and mask must be [N={ids.shape[0]}]")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise UserError(f"targets: empty batch (shape {tuple(ids.shape)})")
    if mask.dtype != torch.bool:
        raise UserError(f"targets: mask must be bool, got {mask.dtype}")
    if not is_full_vocabulary(ids, student_vocab):
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= student_vocab:
            raise UserError(
                f"targets: token id out of the student's vocabulary of {student_vocab} "
                f"(found range {low}..{high})"
            )
    # max propagates NaN, so one reduction per row finds both NaN and +inf.
    row_max = logprobs.amax(dim=-1)
    if bool((mask & (torch.isnan(row_max) | (row_max == float("inf")))).any()):
        raise UserError("targets: teacher log-probs contain NaN or +inf")
    if not torch.isfinite(tail).all() or (tail < 0).any():
        raise UserError("targets: tail mass must be finite and non-negative")
