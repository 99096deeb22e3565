"""Checkpoints of a distributed run, with `torch.distributed.checkpoint` (DCP).

    path = save_sharded(root, model, optimizer, state, keep=2, ranks=ranks)   # every rank calls
    state = restore_sharded(path, model, optimizer, settings)                # every rank calls
    weights = full_weights(model)                                            # rank 0: the model

A checkpoint is the folder `root/step-00000050/`, named as `train.checkpoint` names them: every
rank writes its part of the model and optimiser state as DCP files (`*.distcp`, `.metadata`),
rank 0 adds `trainer_state.json` (step, data position, settings) and `rng.pt`. DCP stores each
tensor by its fully qualified name and global shape, whatever the sharding that wrote it, so a
checkpoint written by 2 processes resumes with 1, 1 with 2, and DDP with FSDP2. The folder must
be on a file system every rank sees (one machine, or a shared one across nodes).

Atomic as in one process: rank 0 stages the folder (`staging.staged_folder`) and tells the
others its name; every rank writes into it; only when all have written does rank 0 rename it to
`step-*`. A rank that dies mid-write fails the others' collectives, rank 0's staging folder is
removed, and no `step-*` folder appears.
"""

import json
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from polydistill.errors import UserError
from polydistill.staging import staged_folder
from polydistill.train.checkpoint import (
    DCP_METADATA,
    FORMAT,
    RNG_FILE,
    STATE_FILE,
    capture_rng,
    check_settings,
    checkpoint_name,
    prune_checkpoints,
    read_state,
    restore_rng,
)
from polydistill.train.distributed import Ranks


def save_sharded(
    root: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    keep: int,
    ranks: Ranks,
) -> Path:
    """Write the checkpoint of `state["step"]` from every rank, atomically; rank 0 then keeps
    only the newest `keep`. Every rank must call it (it is a collective)."""
    target = root / checkpoint_name(state["step"])
    staging_context = staged_folder(target, replace=False) if ranks.main else nullcontext(None)
    with staging_context as staging:
        shared = [str(staging) if staging else None]
        dist.broadcast_object_list(shared, src=0)
        folder = Path(shared[0])
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)
        if ranks.main:
            torch.save(capture_rng(), folder / RNG_FILE)
            record = {"format": FORMAT, **state}
            (folder / STATE_FILE).write_text(
                json.dumps(record, indent=2, default=str), encoding="utf-8"
            )
        dist.barrier()  # every rank's files are in the folder before rank 0 renames it
    if ranks.main:
        prune_checkpoints(root, keep)
    return target


def restore_sharded(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Load a checkpoint (written at any process count) into this rank's share of `model` and
    `optimizer`, and rank 0's RNG states into every rank; returns its trainer state."""
    state = read_state(path)
    if not (path / DCP_METADATA).is_file():
        raise UserError(
            f"checkpoint {path} was written by one process (not sharded); resume it without "
            "torchrun, or train into another folder"
        )
    check_settings(path, state["settings"], settings)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    loaded = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(loaded, checkpoint_id=path)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=loaded["model"],
        optim_state_dict=loaded["optimizer"],
    )
    restore_rng(torch.load(path / RNG_FILE, weights_only=True))
    return state


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU, on rank 0 (empty elsewhere); names as the bare
    model's `state_dict` (no DDP prefix). Every rank must call it (FSDP2 gathers shards)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
