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


def validate_targets(targets: SparseTargets, student_vocab: int) -> None:
    """Reject targets a loss cannot use, naming what is wrong."""
    ids, logprobs, tail, mask = targets.ids, targets.logprobs, targets.tail, targets.mask
    if ids.ndim != 2 or ids.shape != logprobs.shape:
        raise UserError(
            f"targets: ids {tuple(ids.shape)} and logprobs {tuple(logprobs.shape)} "
            "must both be [N, k]"
        )
    if tail.shape != ids.shape[:1] or mask.shape != ids.shape[:1]:
        raise UserError(f"targets: tail and mask must be [N={ids.shape[0]}]")
    if ids.shape[0] == 0:
        raise UserError("targets: empty batch (no positions)")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= student_vocab):
        raise UserError(
            f"targets: token id out of the student's vocabulary of {student_vocab} "
            f"(found range {int(ids.min())}..{int(ids.max())})"
        )
    live = logprobs[mask]
    if not torch.isfinite(live[live != float("-inf")]).all() or torch.isnan(live).any():
        raise UserError("targets: teacher log-probs contain NaN or +inf")
    if not torch.isfinite(tail).all() or (tail < 0).any():
        raise UserError("targets: tail mass must be finite and non-negative")
