"""A served model's prompt log-probs (vLLM's `prompt_logprobs`) read as `TeacherRows`.

    rows = rows_from_prompt_logprobs(ids, start, choice["prompt_logprobs"], top_k, temperature)

vLLM answers a token-id prompt with one entry per position: null for the first, then a map
`{"<token id>": {"logprob", "rank", ...}}` holding the top-k ids and the actual token (always
present, even outside the top-k). Log-probs are at temperature 1 over the model's whole output
vocabulary. Another temperature needs the whole distribution: `full_vocabulary=True` rows
(requested with `prompt_logprobs: -1`) are rescaled exactly, log p_T(i) = l_i/T - logsumexp(l/T),
since the temperature-1 log-probs are the logits up to one constant per position.
"""

from typing import Any

import numpy as np

from polydistill.teachers.protocol import TeacherRows


class MalformedAnswer(ValueError):
    """The server's log-probs do not fit the prompt sent (a bug or a non-vLLM server)."""


def _position(
    entry: dict[str, Any] | None, where: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, log-probs and ranks of one position's map, by rank then log-prob."""
    if not entry:
        raise MalformedAnswer(f"no prompt log-probs at position {where}")
    ids = np.fromiter((int(i) for i in entry), dtype=np.int64, count=len(entry))
    logprobs = np.array([float(v["logprob"]) for v in entry.values()], dtype=np.float64)
    ranks = np.array([int(v.get("rank") or 0) for v in entry.values()], dtype=np.int64)
    return ids, logprobs, ranks


def _rescaled(logprobs: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logprobs / temperature
    top = scaled.max()
    return scaled - (top + np.log(np.exp(scaled - top).sum()))


def rows_from_prompt_logprobs(
    ids: list[int],
    start: int,
    prompt_logprobs: list[dict[str, Any] | None],
    top_k: int,
    temperature: float,
    full_vocabulary: bool = False,
) -> TeacherRows:
    """`TeacherRows` of the rendering `ids` (completion from `start`) from the server's
    per-position maps; `full_vocabulary` when each map holds the whole distribution."""
    if len(prompt_logprobs) != len(ids):
        raise MalformedAnswer(f"{len(prompt_logprobs)} prompt log-prob entries for {len(ids)} ids")
    if temperature != 1.0 and not full_vocabulary:
        raise ValueError("temperature != 1 needs full-vocabulary prompt log-probs")
    token_logprobs = np.empty(len(ids) - 1, dtype=np.float32)
    answer = len(ids) - start
    top_ids = np.zeros((answer, top_k), dtype=np.int64)
    top_logprobs = np.zeros((answer, top_k), dtype=np.float32)
    for position in range(1, len(ids)):
        entry = prompt_logprobs[position]
        observed = (entry or {}).get(str(ids[position]))
        if observed is None:
            raise MalformedAnswer(f"token {ids[position]} missing at position {position}")
        token_logprobs[position - 1] = observed["logprob"]
        if position < start:
            continue
        got_ids, logprobs, ranks = _position(entry, position)
        if temperature != 1.0:
            logprobs = _rescaled(logprobs, temperature)
        # The server's own top-k by rank (the actual token may rank below k); ties by log-prob.
        chosen = np.lexsort((-logprobs, np.where(ranks > 0, ranks, len(ranks) + 1)))[:top_k]
        if len(chosen) < top_k:
            raise MalformedAnswer(f"{len(chosen)} log-probs at position {position}, k={top_k}")
        chosen = chosen[np.argsort(-logprobs[chosen], kind="stable")]
        top_ids[position - start] = got_ids[chosen]
        top_logprobs[position - start] = logprobs[chosen]
    return TeacherRows(
        ids=np.asarray(ids, dtype=np.int64),
        start=start,
        top_ids=top_ids,
        top_logprobs=top_logprobs,
        token_logprobs=token_logprobs,
    )
