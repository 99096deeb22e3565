"""Training: the loop (`loop`), its checkpoints (`checkpoint`) and its log (`log`).

from polydistill.train import train, sft_loss, LossOutput
"""

from polydistill.train.loop import (
    Batch,
    BatchFn,
    LossFn,
    LossOutput,
    accumulate_gradients,
    cosine_lr,
    make_optimizer,
    optimizer_step,
    sft_loss,
    train,
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
