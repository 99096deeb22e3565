"""Compression of a teacher's top-k rows: exact ids, log-probs quantised to one byte each.

    packed = encode_topk(top_ids, top_logprobs, vocab_size)   # rows [P, k], log-probs descending
    ids, logprobs = decode_topk(packed, k)                    # ids exact, log-probs within LEVELS

Log-probs. Per entry, `d = top log-prob - log-prob >= 0` is rounded to the nearest of 256
`LEVELS` (one byte); per row, `shift` (float32) is the top log-prob that gives the decoded row
exactly the original kept mass `sum(exp(top))`, so the tail `1 - sum(exp(top))` survives
quantisation (rounding the top log-prob too would let the kept mass pass 1 and the tail vanish),
and decoding is one table lookup and one subtraction. Rounding with step `s` costs an entry of
probability `p` about `p * s**2 / 24` nats of KL, so the levels are spaced as `exp(d / 2)`
(uniform in `sqrt(p / p_top)`) and every level costs the same: 200 levels cover the first 8 nats,
with steps from 0.01 nats; the last 56 step 0.5 nats down to 36 nats below the top, and mass
further down (under `e^-36` of the top's) is pinned there. Codes never decrease along a row;
storing their differences would save 2-3 bytes per position after compression, but undoing them
is a sequential scan that would halve the read speed, so the codes are stored as they are.

Ids. Kept in rank order, exact, split into byte planes (`byte_planes`): plane 0 the low bytes of
every id, plane 1 the next ones, as many planes as the vocabulary needs (2 up to 65,536 ids, 3 up
to 16.7M). Parquet's zstd then codes each plane near its entropy: a 12-bit vocabulary costs about
12 bits, and frequent (low) ids cost less.
"""

from dataclasses import dataclass

import numpy as np

FINE_LEVELS, FINE_SPAN = 200, 8.0
COARSE_LEVELS, COARSE_STEP = 56, 0.5


def _levels() -> np.ndarray:
    n = np.arange(FINE_LEVELS, dtype=np.float64)
    reach = 1.0 - np.exp(-FINE_SPAN / 2.0)
    fine = -2.0 * np.log1p(-n * reach / (FINE_LEVELS - 1))
    coarse = FINE_SPAN + COARSE_STEP * np.arange(1, COARSE_LEVELS + 1)
    return np.concatenate([fine, coarse])


LEVELS = _levels()
"""`LEVELS[c]`: nats below the row's top log-prob that code c stands for (`LEVELS[0] == 0`)."""
_BOUNDS = (LEVELS[1:] + LEVELS[:-1]) / 2.0
_LEVELS32 = LEVELS.astype(np.float32)


def level_error_bound(d: np.ndarray) -> np.ndarray:
    """The largest |decoded d - d| that rounding to `LEVELS` allows, for d below the last level."""
    code = np.searchsorted(_BOUNDS, d)
    below = np.where(code > 0, LEVELS[np.maximum(code - 1, 0)], 0.0)
    above = np.where(code < len(LEVELS) - 1, LEVELS[np.minimum(code + 1, len(LEVELS) - 1)], d)
    return np.maximum(LEVELS[code] - below, above - LEVELS[code]) / 2.0


@dataclass(frozen=True)
class PackedRows:
    """Top-k rows of P positions: `id_planes` (planes of `P * k` bytes), `codes` (`P * k` uint8
    level codes) and `shift` (`P` float32: each decoded row's top log-prob)."""

    id_planes: list[np.ndarray]
    codes: np.ndarray
    shift: np.ndarray


def planes_for(vocab_size: int) -> int:
    """Byte planes needed for ids below `vocab_size`."""
    return max(1, (max(vocab_size - 1, 1).bit_length() + 7) // 8)


def byte_planes(values: np.ndarray, planes: int) -> list[np.ndarray]:
    """The low `planes` bytes of each value, plane by plane (little-endian)."""
    raw = np.ascontiguousarray(values, dtype="<u4").reshape(-1).view(np.uint8).reshape(-1, 4)
    return [np.ascontiguousarray(raw[:, p]) for p in range(planes)]


def join_planes(planes: list[np.ndarray]) -> np.ndarray:
    """Values (int64) from their byte planes."""
    joined = np.zeros((len(planes[0]), 8), dtype=np.uint8)
    for p, plane in enumerate(planes):
        joined[:, p] = plane
    return joined.view("<i8").reshape(-1)


def encode_topk(top_ids: np.ndarray, top_logprobs: np.ndarray, vocab_size: int) -> PackedRows:
    """Pack rows `[P, k]` (ids distinct and below `vocab_size`, log-probs descending)."""
    if top_ids.size and (top_ids.min() < 0 or top_ids.max() >= vocab_size):
        raise ValueError(f"top-k ids outside the vocabulary of {vocab_size}")
    logprobs = top_logprobs.astype(np.float64)
    top = logprobs[:, :1]
    below = np.where(np.isfinite(logprobs), top - logprobs, np.inf)
    codes = np.searchsorted(_BOUNDS, below).astype(np.uint8)
    with np.errstate(divide="ignore"):
        kept = np.log(np.exp(-below).sum(axis=1))
        decoded_kept = np.log(np.exp(-LEVELS[codes]).sum(axis=1))
    return PackedRows(
        id_planes=byte_planes(top_ids, planes_for(vocab_size)),
        codes=codes.reshape(-1),
        shift=(top[:, 0] + kept - decoded_kept).astype(np.float32),
    )


def decode_topk(packed: PackedRows, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids (int64) and log-probs (float32) `[P, k]`."""
    ids = join_planes(packed.id_planes).reshape(-1, k)
    logprobs = np.take(_LEVELS32, packed.codes.reshape(-1, k))
    np.subtract(packed.shift[:, None], logprobs, out=logprobs)
    return ids, logprobs
