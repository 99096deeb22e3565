"""An exponential moving average of the weights (Polyak averaging), for `train(ema_decay=...)`.

    average = fresh_average(model)
    for step in ...:            # after each optimiser step
        update_average(average, model, decay, step)
    copy_average_into(model, average)   # at the end: the model becomes its average

Why: a small student distilled on a mixture of skills keeps drifting between solutions that fit
its training prompts equally well, and the last iterate is one draw from that drift. The average
over the last ~1/(1-decay) steps generalises better to held-out phrasings (measured on the
specialists world, see benchmarks/RESULTS.md).

The average starts at the initial weights and its rate is warmed up as in TensorFlow's
ExponentialMovingAverage, min(decay, (1 + step) / (10 + step)), so the first steps are not frozen
to the random initialisation. It is kept in float32 whatever the model's dtype.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from polydistill.errors import UserError

AVERAGE_FILE = "average.safetensors"


def fresh_average(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The average before the first step: a float32 copy of every trainable parameter."""
    return {
        name: p.detach().to(torch.float32, copy=True)
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def average_rate(decay: float, step: int) -> float:
    """The decay applied after optimiser step `step` (1-based), warmed up for early steps."""
    return min(decay, (1 + step) / (10 + step))


def update_average(
    average: dict[str, torch.Tensor], model: PreTrainedModel, decay: float, step: int
) -> None:
    """average ← rate · average + (1 - rate) · weights, in place."""
    weights = dict(model.named_parameters())
    names = list(average)
    current = [weights[name].detach().to(torch.float32) for name in names]
    rate = average_rate(decay, step)
    torch._foreach_lerp_([average[name] for name in names], current, 1.0 - rate)


def copy_average_into(model: PreTrainedModel, average: dict[str, torch.Tensor]) -> None:
    weights = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in average.items():
            weights[name].copy_(tensor)


def save_average(folder: Path, average: dict[str, torch.Tensor]) -> None:
    save_file({name: t.contiguous() for name, t in average.items()}, folder / AVERAGE_FILE)


def load_average(folder: Path, model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The average saved in a checkpoint; a UserError if it is missing or of another model."""
    path = folder / AVERAGE_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {folder} has no {AVERAGE_FILE}: it was not trained with EMA")
    average = load_file(path)
    shapes = {name: p.shape for name, p in model.named_parameters() if p.requires_grad}
    if {name: t.shape for name, t in average.items()} != shapes:
        raise UserError(f"checkpoint {folder}: {AVERAGE_FILE} does not match the model")
    return average
