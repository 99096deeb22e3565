"""Which positions a distillation loss counts, with what weight, and the checks on its arguments.

Shared by the dense reference (`reference.reference_distill_loss`) and the chunked training path
(`chunked.distill_loss`), so that both reduce in exactly the same way:

    loss = (1 − ce_weight) · divergence + ce_weight · cross_entropy

where `divergence` is the token mean (or sum) of the per-position divergence over the positions in
`targets.mask`, and `cross_entropy` the token mean (or sum) of the student's cross-entropy on the
label tokens, over positions whose label is not `ignore_index`. A part with no positions is 0.
"""

from dataclasses import dataclass

import torch

from polydistill.errors import UserError
from polydistill.targets import SparseTargets, is_full_vocabulary, validate_targets

REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class PositionWeights:
    """Per-position weights `[N]` of each part (already divided by the token count for "mean")."""

    divergence: torch.Tensor
    cross_entropy: torch.Tensor
    labels: torch.Tensor  # ignored positions hold 0, with cross-entropy weight 0
    full_vocabulary: bool  # targets are the k = V layout, ids 0..V-1 in every row


def position_weights(
    targets: SparseTargets,
    vocab_size: int,
    ce_weight: float,
    labels: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
) -> PositionWeights:
    """Validate the targets and labels against the student vocabulary and weigh each position."""
    validate_targets(targets, vocab_size)
    rows = len(targets)
    if not 0.0 <= ce_weight <= 1.0:
        raise UserError(f"ce_weight must be in [0, 1], got {ce_weight}")
    if reduction not in REDUCTIONS:
        raise UserError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    full = is_full_vocabulary(targets.ids, vocab_size)
    if not full:
        ordered = targets.ids.sort(dim=-1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise UserError("targets: a position lists the same token id twice")
    label_weights, clean_labels = _label_weights(labels, rows, vocab_size, ce_weight, ignore_index)
    divergence = targets.mask.to(torch.float64)
    if reduction == "mean":
        divergence = divergence / divergence.sum().clamp_min(1.0)
        label_weights = label_weights / label_weights.sum().clamp_min(1.0)
    return PositionWeights(divergence, label_weights, clean_labels, full)


def _label_weights(
    labels: torch.Tensor | None, rows: int, vocab_size: int, ce_weight: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if labels is None:
        if ce_weight > 0.0:
            raise UserError("ce_weight > 0 needs labels (the tokens the cross-entropy is taken on)")
        return torch.zeros(rows, dtype=torch.float64), torch.zeros(rows, dtype=torch.long)
    if labels.shape != (rows,):
        raise UserError(f"labels must be [N={rows}], got {tuple(labels.shape)}")
    counted = labels != ignore_index
    live = labels[counted]
    if live.numel() and (int(live.min()) < 0 or int(live.max()) >= vocab_size):
        raise UserError(
            f"labels: token id out of the student's vocabulary of {vocab_size} "
            f"(found range {int(live.min())}..{int(live.max())})"
        )
    return counted.to(torch.float64), torch.where(counted, labels, 0).long()
