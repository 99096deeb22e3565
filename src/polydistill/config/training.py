"""How a world model is sized and how any model trains: `teachers[].model`, `teachers[].train`,
`student.model` and `student.train`.

    train: {steps: 600, batch_size: 128, lr: 3.0e-3, warmup_steps: 50, length_buckets: 3}

Read by `polydistill.train` (the loop's arguments: `TrainConfig.loop_arguments`) and by the
world's architectures; torch-free, as the whole config layer is.
"""

from typing import Annotated

from pydantic import Field

from polydistill.config.distributed import DistributedConfig
from polydistill.config.fields import NonNegative, Positive, Strict


class ModelSize(Strict):
    """A world architecture's sizes (teachers, and a student without `init`); head_dim 64 or 128
    keeps the model servable by vLLM's CPU backend."""

    hidden_size: Positive = 128
    """Width of the residual stream."""
    layers: Positive = 3
    """Decoder layers."""
    heads: Positive = 2
    """Attention heads."""
    kv_heads: Positive = 2
    """Key/value heads (grouped-query attention when fewer than `heads`)."""
    head_dim: Positive = 64
    """Width of each attention head."""
    intermediate_size: Positive = 512
    """Width of the MLP (of each expert, for gpt-oss)."""
    experts: Positive = 4
    """Experts per layer (gpt-oss's mixture of experts only)."""
    experts_per_token: Positive = 2
    """Experts each token is routed to (gpt-oss only)."""
    max_positions: Positive = 256
    """Longest sequence (also the sliding window where the family has one)."""


class TrainConfig(Strict):
    """Training of one model: AdamW, linear warmup then a cosine decay of the learning rate."""

    steps: Positive = 1000
    """Optimiser steps."""
    batch_size: Positive = 64
    """Rows per optimiser step (the global batch under torchrun)."""
    lr: Annotated[float, Field(gt=0)] = 3e-3
    """Peak learning rate, reached after the warmup."""
    warmup_steps: NonNegative = 50
    """Steps of linear warmup from 0 to `lr`."""
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Where the cosine ends, as a fraction of `lr`."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    """AdamW's decoupled weight decay."""
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    """Largest gradient norm; larger gradients are scaled down to it."""
    seed: int = 0
    """Seed of a randomly initialised model's weights, of the batch order and (a student's) of
    the teachers' sampled answers."""
    length_buckets: Positive | None = None
    """Split each batch into this many micro-batches of similar row length
    (`chat.batch_rows`), accumulated into one optimiser step: the same gradient as the whole
    batch, with less padding. Unset rather than 1, so that the world keys of teachers that do
    not set it stay the same."""
    ema_decay: Annotated[float, Field(ge=0, lt=1)] | None = None
    """Keep an exponential moving average of the weights (warmed up as min(decay, (1+step) /
    (10+step)), saved in every checkpoint) and make it the trained model when training ends
    (`train.average`); unset: off, which keeps the world keys of teachers that do not set it."""
    threads: Positive = 1
    """Torch threads the model trains on, whatever the machine's cores or the models beside it:
    on CPU the last bits of the weights depend on the thread count (`train.reproducible`), so it
    is part of the config (and of a world teacher's key)."""

    @property
    def buckets(self) -> int:
        return self.length_buckets or 1

    def loop_arguments(self) -> dict:
        """Keyword arguments of `train.train`: every field but those of the data (the batch
        size; the length buckets, which become accumulation steps), the threads (set around
        the whole training by `train.reproducible.fixed_threads`) and a student's process
        layout under torchrun (`StudentTrainConfig.distributed`)."""
        layout = {"batch_size", "length_buckets", "threads", "distributed"}
        arguments = self.model_dump(exclude=layout)
        return {**arguments, "accumulation_steps": self.buckets}


class StudentTrainConfig(TrainConfig):
    """The student's training: a teacher's settings, and how torchrun spreads it."""

    distributed: DistributedConfig | None = None
    """Under `torchrun ... -m polydistill run` only: DDP or FSDP2, the backend and the
    collective timeout; unset there, DDP with its defaults; ignored by a run in one process.
    `batch_size` is the global batch: the processes split each (micro-)batch evenly, so their
    count must divide batch_size / length_buckets."""
