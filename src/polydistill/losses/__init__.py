"""Distillation losses over sparse teacher targets (`targets.SparseTargets`).

- `reference`: the dense references, `divergence` (full teacher vs full student logits; its `jsd`
  is TRL GKD's `generalized_jsd_loss`) and `reference_distill_loss` (full student logits vs sparse
  targets); the definitions of every kind, the tail bucket and the temperature live there.
- `chunked`: `distill_loss` / `distill_loss_parts`, the training path, fused with the student's
  lm_head and chunked by a memory budget so that `[tokens × vocab]` logits never exist.
- `divergences`: the per-bucket terms of every kind and their gradients; `full_vocab`: the fused
  elementwise kernel for k = V targets; `positions`: which positions count, with what weight.
- `cross_tokenizer`: chunk-likelihood and ULD baselines on aligned chunks (cross-tokenizer work).
"""

from polydistill.losses.chunked import (
    LossParts,
    default_memory_budget_mb,
    distill_loss,
    distill_loss_parts,
)
from polydistill.losses.divergences import KINDS
from polydistill.losses.reference import divergence, reference_distill_loss

__all__ = [
    "KINDS",
    "LossParts",
    "default_memory_budget_mb",
    "distill_loss",
    "distill_loss_parts",
    "divergence",
    "reference_distill_loss",
]
