"""Training: the loop (`loop`), one optimiser step (`step`), its checkpoints (`checkpoint`)
and its log (`log`).

from polydistill.train import train, sft_loss, LossOutput
"""

from polydistill.train.loop import cosine_lr, make_optimizer, train
from polydistill.train.step import (
    Batch,
    BatchFn,
    LossFn,
    LossOutput,
    accumulate_gradients,
    optimizer_step,
    sft_loss,
)

__all__ = [
    "Batch",
    "BatchFn",
    "LossFn",
    "LossOutput",
    "accumulate_gradients",
    "cosine_lr",
    "make_optimizer",
    "optimizer_step",
    "sft_loss",
    "train",
]
