"""Training that gives the same bits on every run on one kind of machine.

    with fixed_threads(cfg.student.train.threads):
        train(model, ...)

A fresh run seeds python, numpy and torch (`train.loop`), but on CPU that is not enough: a
reduction split over threads adds in another order with another thread count, so a model's
weights depend on how many threads trained it, and some kernels (measured: GptOss's mixture of
experts on two threads) differ from run to run unless torch's deterministic algorithms are on.
So every model trains on the thread count of its config, whatever the machine's cores or the
number of models training side by side, with deterministic algorithms.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """Run the block on `threads` torch threads with deterministic algorithms, then restore
    this process's settings (a model trained in the parent leaves it as it was)."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
