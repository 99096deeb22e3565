"""The weights a run returns, chosen by a score on data it does not train on (`train(select_by=)`).

    train(model, ..., ema_decay=0.998, select_every=250,
          select_by=lambda m: mean_agreement(m, validation_prompts, teacher_answers))

Every `select_every` steps and at the last one, `select_by(model)` scores the weights the run
would return if it stopped there (their moving average when the run keeps one); when the run
ends, the model holds the best-scoring of them (the earlier on a tie). Why: a small student
distilled on a few skills can overfit late, so the last weights are not always its best
(measured on the specialists world, benchmarks/RESULTS.md, "Student recipe").

The best weights and every score so far live in each checkpoint (`selected.safetensors`, and
`selection` in its trainer state), so a killed run resumes with the choice it had made; scores
depend only on the weights, so a resumed run scores as the killed one would have. A finished run
with a `run_dir` also writes its choice to `run_dir/selection.json` (`read_selection`), so it
is known even when the run kept no checkpoints.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from polydistill.errors import UserError
from polydistill.staging import write_json
from polydistill.train.average import copy_average_into

SELECTED_FILE = "selected.safetensors"
CHOICE_FILE = "selection.json"
ScoreFn = Callable[[PreTrainedModel], float]


@dataclass
class Selection:
    """The best weights scored so far, their step and score, and every (step, score)."""

    step: int = 0
    score: float = -math.inf
    weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        """What a checkpoint's trainer state records (the weights go in their own file; no
        score yet is None, since strict JSON has no -Infinity)."""
        score = self.score if self.history else None
        return {"step": self.step, "score": score, "history": self.history}


def trainable_copy(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """A copy of every trainable parameter, in its own dtype (so it restores exactly)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def score_weights(
    model: PreTrainedModel, weights: dict[str, torch.Tensor] | None, select_by: ScoreFn
) -> float:
    """`select_by` of the model holding `weights` (its own when None); the model's weights are
    put back afterwards, so training continues from them unchanged."""
    if weights is None:
        return float(select_by(model))
    own = trainable_copy(model)
    copy_average_into(model, weights)
    try:
        return float(select_by(model))
    finally:
        copy_average_into(model, own)


def consider(
    selection: Selection,
    model: PreTrainedModel,
    average: dict[str, torch.Tensor] | None,
    step: int,
    select_by: ScoreFn,
) -> float:
    """Score the weights the run would return at `step`; keep them if they are the best yet."""
    score = score_weights(model, average, select_by)
    if not math.isfinite(score):
        raise UserError(f"step {step}: the selection score is {score}, not a finite number")
    selection.history.append({"step": step, "score": score})
    if score > selection.score:
        chosen = average if average is not None else trainable_copy(model)
        selection.step, selection.score = step, score
        selection.weights = {name: t.detach().clone() for name, t in chosen.items()}
    return score


def save_selected(folder: Path, selection: Selection) -> None:
    if selection.weights is not None:
        weights = {name: t.contiguous() for name, t in selection.weights.items()}
        save_file(weights, folder / SELECTED_FILE)


def load_selection(folder: Path | None, state: dict[str, Any]) -> Selection:
    """The selection a checkpoint holds (a fresh one for a fresh run)."""
    recorded = state.get("selection")
    if folder is None or recorded is None:
        return Selection()
    if not recorded["history"]:
        return Selection()
    path = folder / SELECTED_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {folder} has scores but no {SELECTED_FILE}")
    weights = load_file(path)
    history = [dict(point) for point in recorded["history"]]
    return Selection(recorded["step"], recorded["score"], weights, history)


def write_selection(run_dir: Path, selection: Selection) -> None:
    """Record a finished run's choice (step, score, every score) in `run_dir`."""
    write_json(run_dir / CHOICE_FILE, selection.state())


def read_selection(run_dir: Path) -> dict[str, Any] | None:
    """The choice a finished run recorded in `run_dir` (None when it chose nothing there)."""
    path = run_dir / CHOICE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
