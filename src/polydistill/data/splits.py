"""Hashed split assignment: a prompt's split depends only on its id and the seed.

A prompt's position is the salted 64-bit BLAKE2b of its id, read as a fraction of 2**64: test
takes the positions below `test`, validation the next `validation`, train the rest. So the
assignment is the same in every run, on every machine and in every row order; duplicates of a
prompt land in the same split; and the test split does not move when the validation share
changes.
"""

import hashlib
from collections.abc import Mapping

from polydistill.data.records import Split


def position(record_id: str, seed: int) -> float:
    """The prompt's place in [0, 1), uniform over ids, fixed by the id and the seed."""
    digest = hashlib.blake2b(f"{seed}:{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def hashed_split(record_id: str, seed: int, shares: Mapping[str, float]) -> Split:
    """The split of a train file's prompt when `shares` of them go to test and validation."""
    where = position(record_id, seed)
    edge = 0.0
    for split in ("test", "validation"):
        edge += shares.get(split, 0.0)
        if where < edge:
            return split
    return "train"
