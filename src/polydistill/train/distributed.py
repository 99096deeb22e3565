"""Training over several processes started by torchrun: the process group and its rules.

    torchrun --nproc-per-node 2 my_training_script.py      # sets WORLD_SIZE, RANK, LOCAL_RANK…

    config = DistributedConfig(strategy="fsdp")
    with process_group(config) as ranks:                     # gloo on CPU, nccl on CUDA
        agree_on_settings(ranks, settings)                   # else one line on every rank
        model = wrap_model(model.to(ranks.device), config.strategy)
        share = rank_share(batch_at(i), ranks)               # this rank's rows of a global batch

`train.distributed_loop.train_distributed` runs the loop of `train.loop` on these pieces. A
global micro-batch is `batch_at(i)` (the same pure function of `i` as in one process); rank `r`
of `w` takes its rows `[r·B/w, (r+1)·B/w)`, so the global batch is fixed by the data and not by
the process count, and a `w` that does not divide `B` is a UserError before any step.

Failure: every collective runs under `DistributedConfig.timeout_s`; a rank that dies closes its
sockets, so gloo fails the others' next collective at once (nccl: with
`TORCH_NCCL_ASYNC_ERROR_HANDLING`, set here), and torchrun's elastic agent then stops the rest
and exits non-zero naming the failed rank. `errors.CollectiveFailed` is the error a surviving rank
raises: one line saying which step it was in.
"""

import hashlib
import json
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from polydistill.config.distributed import DistributedConfig
from polydistill.errors import UserError

Batch = dict[str, torch.Tensor]
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class Ranks(NamedTuple):
    """This process's place in the run."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this rank writes the run's logs and outputs."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its env)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def current_ranks() -> Ranks | None:
    """This process's place in the process group it joined (`process_group`); None outside one."""
    if not dist.is_initialized():
        return None
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def _world_from_env() -> tuple[int, int, int]:
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise UserError(
            f"distributed training needs torchrun's environment ({', '.join(missing)} unset); "
            "start it with torchrun --nproc-per-node N"
        )
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def _backend_and_device(config: DistributedConfig, local_rank: int) -> tuple[str, torch.device]:
    backend = config.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UserError("distributed backend nccl needs CUDA, and none is available")
        torch.cuda.set_device(local_rank)
        return backend, torch.device("cuda", local_rank)
    return backend, torch.device("cpu")


@contextmanager
def process_group(config: DistributedConfig) -> Iterator[Ranks]:
    """Join the process group torchrun set up; leave it on a clean exit or a UserError (restore
    SIGTERM always).

    SIGTERM (what torchrun sends the survivors when a rank fails) becomes SystemExit, so a
    half-written checkpoint's staging folder is removed on the way out rather than left.
    """
    rank, world, local_rank = _world_from_env()
    backend, device = _backend_and_device(config, local_rank)
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=config.timeout_s),
            device_id=device if backend == "nccl" else None,
        )
        try:
            yield Ranks(rank, world, device)
        except UserError:
            # A refusal (on every rank, or on this one alone) leaves no collective pending here.
            # Left to the interpreter's exit, gloo's threads are still joinable and the process
            # aborts (SIGABRT) instead of exiting with the refusal's code.
            dist.destroy_process_group()
            raise
        # Not after a failed collective: tearing the group down can wait on the dead peer; the
        # process's exit releases it anyway.
        dist.destroy_process_group()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of JSON-able settings (keys sorted)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def agree_on_settings(ranks: Ranks, settings: Mapping[str, Any]) -> None:
    """UserError on every rank unless all ranks run the same settings (hashes all-gathered)."""
    hashes = _gathered(ranks, settings_hash(settings))
    differing = [r for r, h in enumerate(hashes) if h != hashes[0]]
    if differing:
        raise UserError(
            f"the ranks were started with different configs: rank 0 has {hashes[0]}, "
            + ", ".join(f"rank {r} has {hashes[r]}" for r in differing)
            + "; start every rank with the same config"
        )


def agree_on_checkpoints(ranks: Ranks, root: Path | None, found: list[str]) -> None:
    """UserError on every rank unless all ranks see the same checkpoints under `root` (a run
    folder on a disk of one node only would have ranks resume from different states)."""
    seen = _gathered(ranks, found)
    differing = [r for r, names in enumerate(seen) if names != seen[0]]
    if differing:
        newest = [names[-1] if names else "none" for names in seen]
        raise UserError(
            f"the ranks see different checkpoints in {root}: newest on rank 0 {newest[0]}, "
            + ", ".join(f"on rank {r} {newest[r]}" for r in differing)
            + "; put the run folder on a file system every node shares"
        )


def _gathered(ranks: Ranks, value: Any) -> list[Any]:
    values: list[Any] = [None] * ranks.world
    dist.all_gather_object(values, value)
    return values


def check_global_batch(batch: Batch, world: int) -> int:
    """The rows of a global micro-batch; UserError unless `world` ranks can split them evenly."""
    rows = {v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.ndim > 0}
    if len(rows) != 1:
        raise UserError(f"a micro-batch's tensors disagree on their number of rows: {sorted(rows)}")
    (count,) = rows
    if count % world:
        raise UserError(
            f"the global micro-batch has {count} rows, which {world} processes cannot split "
            f"evenly; use a process count that divides {count}, or change the batch size"
        )
    return count


def rank_share(batch: Batch, ranks: Ranks) -> Batch:
    """This rank's contiguous slice of the rows of every tensor of a global micro-batch."""
    share = check_global_batch(batch, ranks.world) // ranks.world
    rows = slice(ranks.rank * share, (ranks.rank + 1) * share)
    return {k: v[rows] if torch.is_tensor(v) and v.ndim > 0 else v for k, v in batch.items()}


def wrap_model(model: torch.nn.Module, strategy: str) -> torch.nn.Module:
    """`model` (already on this rank's device) under DDP, or sharded in place by FSDP2.

    Both start every rank from rank 0's weights (DDP copies them when it wraps; FSDP2 keeps
    each rank's shard of its own, so they are broadcast first). FSDP2 shards each decoder layer
    (the modules a transformers model lists in `_no_split_modules`) as its own unit, then the
    rest (embeddings, final norm, head).
    """
    if strategy == "ddp":
        device_ids = [model.device.index] if model.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    with torch.no_grad():  # each rank keeps its shard of *its* weights: make them rank 0's
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, src=0)
    layer_names = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in layer_names:
            fully_shard(module)
    fully_shard(model)
    return model


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself under a DDP wrapper (FSDP2 shards in place, so it has none)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over the ranks, in float64 (token counts stay exact up to 2⁵³)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_flag(flag: bool, ranks: Ranks) -> bool:
    """Rank 0's `flag` on every rank (a decision one rank takes for all)."""
    tensor = torch.tensor([int(flag)], device=ranks.device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())
