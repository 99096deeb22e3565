"""Training checkpoints on disk (the final model: `student.export`).

    path = save_training_state(root, model, optimizer, state, keep=2)
    state = restore_training_state(path, model, optimizer, state["settings"])

A checkpoint is the folder `root/step-00000050/`: the model as `save_pretrained` writes it
(safetensors + config, so any checkpoint also loads with `from_pretrained`), `optimizer.pt`,
`rng.pt` (python, numpy, torch and CUDA generator states), `average.safetensors` when the run
keeps a moving average of the weights, `selected.safetensors` when it chooses its weights by a
score (`train.selection`), and `trainer_state.json` (step, data
position, whether the run had finished, and the settings that shaped the run). It is written in a
hidden `.tmp-*` sibling, flushed to disk and renamed into place, so a folder named `step-*` is
always complete; a killed write leaves only a `.tmp-*` folder, which `clear_leftovers` removes.
Only the newest `keep` checkpoints stay; the others are renamed away before they are deleted.
"""

import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from polydistill.errors import UserError
from polydistill.staging import staged_folder
from polydistill.train.average import save_average
from polydistill.train.selection import Selection, save_selected

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
PREFIX = "step-"
FORMAT = 1
MAX_LISTED_DIFFERENCES = 5
DCP_METADATA = ".metadata"  # what torch.distributed.checkpoint writes beside its shards


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def clear_leftovers(root: Path) -> None:
    """Remove what killed writes and prunes left behind (`.tmp-*`, `.trash-*`)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)


def save_training_state(
    root: Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    keep: int,
    average: dict[str, torch.Tensor] | None = None,
    selection: Selection | None = None,
) -> Path:
    """Write the checkpoint of `state["step"]` atomically, then keep only the newest `keep`.
    `average`: the weights' moving average (`train.average`), saved beside them; `selection`:
    the best weights scored so far (`train.selection`)."""
    target = root / checkpoint_name(state["step"])
    with staged_folder(target, replace=False) as staging:
        save_model_quietly(model, staging)
        if average is not None:
            save_average(staging, average)
        if selection is not None:
            save_selected(staging, selection)
        torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        torch.save(capture_rng(), staging / RNG_FILE)
        record = {"format": FORMAT, **state}
        (staging / STATE_FILE).write_text(
            json.dumps(record, indent=2, default=str), encoding="utf-8"
        )
    prune_checkpoints(root, keep)
    return target


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (renamed away first, so none is half-gone)."""
    for old in list_checkpoints(root)[:-keep]:
        retired = root / f".trash-{old.name}"
        os.rename(old, retired)
        shutil.rmtree(retired)


def read_state(path: Path) -> dict[str, Any]:
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    if state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path}: format {state.get('format')}, expected {FORMAT}")
    return state


def check_settings(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """UserError naming every setting that differs between a checkpoint and this run."""
    old, new = _flatten(saved), _flatten(json.loads(json.dumps(current, default=str)))
    differing = sorted(k for k in old.keys() | new.keys() if old.get(k, "—") != new.get(k, "—"))
    if differing:
        shown = "; ".join(
            f"{k}: checkpoint {old.get(k, '—')!r}, now {new.get(k, '—')!r}"
            for k in differing[:MAX_LISTED_DIFFERENCES]
        )
        more = len(differing) - MAX_LISTED_DIFFERENCES
        raise UserError(
            f"cannot resume from {path}: it was written by a different config ({shown}"
            + (f"; and {more} more" if more > 0 else "")
            + "); resume with the same config or use another folder"
        )


def restore_training_state(
    path: Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Load a checkpoint into `model`, `optimizer` and the RNGs; returns its trainer state."""
    state = read_state(path)
    if (path / DCP_METADATA).is_file():
        raise UserError(
            f"checkpoint {path} was written by a torchrun run (sharded, DCP); resume it under "
            "torchrun, or train into another folder"
        )
    check_settings(path, state["settings"], settings)
    load_weights(path, model)
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, weights_only=True))
    restore_rng(torch.load(path / RNG_FILE, weights_only=True))
    return state


def load_weights(path: Path, model: PreTrainedModel) -> None:
    """Copy the saved weights into `model` exactly; tied parameters may be absent from the file."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    saved: dict[str, torch.Tensor] = {}
    for shard in shards:
        saved.update(load_file(path / shard))
    own = model.state_dict()
    loaded_storage = {own[k].data_ptr() for k in saved.keys() & own.keys()}
    missing = [k for k in own.keys() - saved.keys() if own[k].data_ptr() not in loaded_storage]
    unexpected = sorted(saved.keys() - own.keys())
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not match the model: "
            f"missing {sorted(missing)[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            own[name].copy_(tensor)


def capture_rng() -> dict[str, Any]:
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: Mapping[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_model_quietly(
    model: PreTrainedModel, folder: Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """`save_pretrained` in safetensors (of `state_dict` when given), without a progress bar
    per checkpoint."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, state_dict=state_dict)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}
