"""Exact-duplicate detection in about 8 bytes per prompt: the 64-bit ids seen so far.

A Python set costs about 90 bytes per 64-bit int (measured in tests/data/test_data_streaming.py),
so ids are kept in a small set of recent ones that is merged, once full, into sorted numpy runs
whose sizes at least double from the newest to the oldest (a log-structured merge): a lookup is
one binary search per run, at most log2(n / recent) + 1 of them, and a merge copies each id
O(log n) times in all. Two different prompts share a 64-bit id with probability about
n^2 / 2^65 (3e-6 for ten million prompts); the later one would be dropped as a duplicate.
"""

import numpy as np


class SeenIds:
    """The set of ids (as 64-bit ints) added so far; `add` says whether an id is new."""

    def __init__(self, recent: int = 4096) -> None:
        self._capacity = recent
        self._recent: set[int] = set()
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._recent) + sum(len(run) for run in self._runs)

    def add(self, key: int) -> bool:
        """Add `key`; True when it was not there before."""
        if key in self._recent:
            return False
        value = np.uint64(key)  # a Python int above 2**63 would take numpy's slow object path
        for run in self._runs:
            at = run.searchsorted(value)
            if at < len(run) and run[at] == value:
                return False
        self._recent.add(key)
        if len(self._recent) >= self._capacity:
            self._flush()
        return True

    def _flush(self) -> None:
        run = np.sort(np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent)))
        self._recent.clear()
        while self._runs and len(self._runs[-1]) <= len(run):
            run = np.sort(np.concatenate([self._runs.pop(), run]), kind="stable")
        self._runs.append(run)
