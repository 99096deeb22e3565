"""`student.train.distributed`: how a run started by torchrun spreads the student's training.

    torchrun --nproc-per-node 2 -m polydistill run CONFIG --out DIR
    student:
      train: {batch_size: 64, distributed: {strategy: fsdp, timeout_s: 3600}}

Read only under torchrun (`train.distributed.launched_by_torchrun`): unset, such a run uses
these defaults (DDP, gloo on CPU / nccl on CUDA, 30 minutes); a run without torchrun trains in
one process whatever it says. Kept free of torch, as the whole config layer is.
"""

from typing import Annotated, Literal

from pydantic import Field

from polydistill.config.fields import Strict


class DistributedConfig(Strict):
    """How a run started by torchrun spreads its training over the processes."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """"ddp": every rank holds the whole model and optimiser, gradients are all-reduced
    (DistributedDataParallel). "fsdp": parameters, gradients and optimiser state are sharded
    over the ranks (FSDP2 `fully_shard`, one unit per decoder layer and one for the rest), for a
    student that does not fit one device."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Collective backend: "auto" is nccl when CUDA is available, else gloo (CPU)."""
    timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    """Seconds a collective may wait for the other ranks before this rank gives up with an
    error; bounds how long the survivors of a hung (not dead) rank wait. A dead rank's sockets
    close and fail the others' next collective at once, whatever this is. In `polydistill run`
    it also bounds how long the other ranks wait for rank 0 to build the world, evaluate the
    teachers and write the training rows: set it above that."""
