"""Compression of a teacher's top-k rows: exact ids, log-probs quantised to one byte each.

    packed = encode_topk(top_ids, top_logprobs)            # rows [P, k], log-probs descending
    ids, logprobs = decode_topk(packed, k)                 # ids exact, log-probs within LEVELS

Log-probs. Each row keeps its log-sum-exp (`lse`, the log of the kept mass, float16) and, per
entry, `d = top log-prob - log-prob >= 0` rounded to the nearest of 256 `LEVELS`. An entry's error
`eps` in log space costs about `p * eps**2 / 24` nats of KL, so the levels are spaced as
`exp(d / 2)` (uniform in `sqrt(p / p_top)`): every level costs the same, and 200 levels cover the
first 8 nats with steps from 0.01 nats. The last 56 step 0.5 nats down to 36 nats below the top;
mass further down is under `e^-36` of the top's and is pinned there. Decoding renormalises each
row to its stored `lse`, so the tail mass `1 - sum(exp(top))` survives quantisation (a plain
rounding would let the kept mass pass 1 and the tail vanish). Codes never decrease along a row,
so their differences (mostly 0-3) are stored, which the page compressor squeezes to a few bits.

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
_EXP_LEVELS = np.exp(-LEVELS)
_LEVELS32 = LEVELS.astype(np.float32)


def level_error_bound(d: np.ndarray) -> np.ndarray:
    """The largest |decoded d - d| that rounding to `LEVELS` allows, for d below the last level."""
    code = np.searchsorted(_BOUNDS, d)
    below = np.where(code > 0, LEVELS[np.maximum(code - 1, 0)], 0.0)
    above = np.where(code < len(LEVELS) - 1, LEVELS[np.minimum(code + 1, len(LEVELS) - 1)], d)
    return np.maximum(LEVELS[code] - below, above - LEVELS[code]) / 2.0


@dataclass(frozen=True)
class PackedRows:
    """Top-k rows of P positions: `id_planes` (planes of `P * k` bytes), `code_steps` (`P * k`
    uint8, row-wise differences of the level codes) and `lse` (`P` float16)."""

    id_planes: list[np.ndarray]
    code_steps: np.ndarray
    lse: np.ndarray


def planes_for(vocab_size: int) -> int:
    """Byte planes needed for ids below `vocab_size`."""
    return max(1, (max(vocab_size - 1, 1).bit_length() + 7) // 8)


def byte_planes(values: np.ndarray, planes: int) -> list[np.ndarray]:
    """The low `planes` bytes of each value, plane by plane (little-endian)."""
    raw = np.ascontiguousarray(values, dtype="<u4").reshape(-1).view(np.uint8).reshape(-1, 4)
    return [np.ascontiguousarray(raw[:, p]) for p in range(planes)]


def join_planes(planes: list[np.ndarray]) -> np.ndarray:
    """Values (int64) from their byte planes."""
    out = planes[0].astype(np.int64)
    for shift, plane in enumerate(planes[1:], start=1):
        out |= plane.astype(np.int64) << (8 * shift)
    return out


def encode_topk(top_ids: np.ndarray, top_logprobs: np.ndarray, vocab_size: int) -> PackedRows:
    """Pack rows `[P, k]` (ids distinct and below `vocab_size`, log-probs descending)."""
    if top_ids.size and (top_ids.min() < 0 or top_ids.max() >= vocab_size):
        raise ValueError(f"top-k ids outside the vocabulary of {vocab_size}")
    logprobs = top_logprobs.astype(np.float64)
    top = logprobs[:, :1]
    below = np.where(np.isfinite(logprobs), top - logprobs, np.inf)
    codes = np.searchsorted(_BOUNDS, below).astype(np.uint8)
    steps = np.diff(codes, axis=1, prepend=np.uint8(0)).astype(np.uint8)
    with np.errstate(divide="ignore"):
        lse = top[:, 0] + np.log(np.exp(logprobs - top).sum(axis=1)) if len(top) else top[:, 0]
    return PackedRows(
        id_planes=byte_planes(top_ids, planes_for(vocab_size)),
        code_steps=steps.reshape(-1),
        lse=lse.astype(np.float16),
    )


def decode_topk(packed: PackedRows, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids (int64) and log-probs (float32) `[P, k]`, each row renormalised to its stored lse."""
    ids = join_planes(packed.id_planes).reshape(-1, k)
    codes = np.cumsum(packed.code_steps.reshape(-1, k), axis=1, dtype=np.uint8)
    kept = np.log(_EXP_LEVELS[codes].sum(axis=1))
    shift = (packed.lse.astype(np.float64) - kept).astype(np.float32)
    logprobs = shift[:, None] - _LEVELS32[codes]
    return ids, logprobs
