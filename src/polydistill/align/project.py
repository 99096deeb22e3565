"""Project a teacher's sparse next-token distributions into the student's vocabulary.

Input: an `AlignedSequence` and, for every teacher position, the teacher's top-k token ids and
log-probabilities (row i is the distribution after teacher token i, as a forward pass gives it).
Output: `SparseTargets` with one row per student position (row j: after student token j), the
rows that predict a completion token or the end-of-turn token masked in.

The rule, for the student token s covering bytes [d, d2) of the completion:

1. Start at the teacher token r0 that contains byte d. Its distribution is over continuations
   of the bytes before r0; the student has already seen the part R = [start of r0, d), so only
   teacher candidates whose bytes begin with R are consistent, and the target is conditioned on
   them (divided by their mass). A candidate that is exactly R says nothing about what follows:
   its mass is kept in the normaliser but cannot be placed. The teacher's own tail (the mass
   outside its top-k) is taken to be consistent with R in the same proportion as its top-k.
2. A consistent candidate w continues the text with bytes C (w without R). The student would
   start that continuation with its longest vocabulary token that is a prefix of C: w's mass
   goes there. Where w's bytes are one student token, that is a direct mapping.
3. The observed teacher token is not mapped while it ends inside s: its mass flows down the
   observed path (chain rule). At the next teacher token, each candidate w' continues the bytes
   already on the path (from d to that token) and goes, with weight P(path) x q(w'), to the
   longest student prefix of path + w'. When the observed token reaches the end of s, its path
   probability goes to s itself. A teacher that splits "123" into "1", "2", "3" thus gives the
   student token "123" the probability of the whole continuation, not of "1" alone.
4. Mass with no place goes to the tail: the teacher's own tail (outside its top-k), special
   tokens with no student counterpart, and the unplaceable candidates of step 1. The two
   end-of-turn tokens are paired, so the teacher's probability of ending goes to the student's.
   A row where nothing the teacher said is consistent with the student's context is left out
   of the loss (mask false) rather than given an empty target.

Why this rule: it is exact in the identity case (every student token is a teacher token, the
observed path is one token long and each candidate maps to itself) and exact for every
continuation the teacher's top-k and observed path determine. It approximates only what the
teacher did not say: an off-path candidate is credited to the longest student prefix of its
bytes (what would follow it is unknown), and the top-k's tail is as consistent with R as the
top-k. Conditioning on R keeps every student target a distribution over what can actually follow
the student's context, and the tail reports what could not be placed (`tail_share`).
"""

from dataclasses import dataclass

import numpy as np
import torch

from polydistill.align.chunks import AlignedSequence
from polydistill.align.vocabmap import VocabMap
from polydistill.targets import SparseTargets


def _student_targets(seq: AlignedSequence) -> dict[str, np.ndarray]:
    """For each student token to predict: byte start, teacher tokens first..last, consumed bytes."""
    teacher_ends = np.cumsum(seq.teacher_lengths)
    teacher_starts = np.append(teacher_ends - seq.teacher_lengths, len(seq.text))
    student_ends = np.cumsum(seq.student_lengths)
    starts = student_ends - seq.student_lengths
    usable = seq.student_lengths > 0
    first = np.where(usable, np.searchsorted(teacher_ends, starts, side="right"), 0)
    last = np.where(usable, np.searchsorted(teacher_ends, student_ends - 1, side="right"), 0)
    index = np.arange(len(seq.student_lengths)) + seq.student_start
    if seq.ends:  # the end-of-turn tokens: a zero-byte step, paired with each other
        end_teacher = len(seq.teacher_lengths)
        starts = np.append(starts, len(seq.text))
        first, last = np.append(first, end_teacher), np.append(last, end_teacher)
        usable = np.append(usable, True)
        index = np.append(index, seq.student_start + len(seq.student_lengths))
    consumed = np.where(usable, starts - teacher_starts[first], 0)
    return {
        "start": starts,
        "first": first,
        "last": last,
        "consumed": consumed,
        "usable": usable,
        "index": index,
        "teacher_starts": teacher_starts,
    }


@dataclass(frozen=True)
class _Steps:
    """One row per (target, teacher token on the observed path through the target's bytes)."""

    target: np.ndarray
    token: np.ndarray  # completion-relative teacher token index
    depth: np.ndarray  # position on the path, 0 = the token holding the target's first byte
    teacher_row: np.ndarray  # the teacher row predicting `token`
    valid: np.ndarray  # that row exists


def _steps(seq: AlignedSequence, t: dict[str, np.ndarray], n_rows: int) -> _Steps:
    counts = np.where(t["usable"], t["last"] - t["first"] + 1, 0)
    target = np.repeat(np.arange(len(counts)), counts)
    depth = np.arange(len(target)) - (np.cumsum(counts) - counts)[target]
    token = t["first"][target] + depth
    teacher_row = seq.teacher_start + token - 1
    valid = (teacher_row >= 0) & (teacher_row < n_rows)
    return _Steps(target, token, depth, np.clip(teacher_row, 0, n_rows - 1), valid)


def _path_weights(depth: np.ndarray, step_prob: np.ndarray) -> np.ndarray:
    """P(observed path up to each row): product of the observed-token probabilities before it.

    Rows of one target are consecutive, so row i-1 is the previous step; levels go in order."""
    weight = np.ones(len(depth))
    order = np.argsort(depth.astype(np.int32), kind="stable")
    sorted_depth = depth[order]
    for level in range(1, int(depth.max(initial=0)) + 1):
        lo, hi = np.searchsorted(sorted_depth, [level, level + 1])
        rows = order[lo:hi]
        weight[rows] = weight[rows - 1] * step_prob[rows - 1]
    return weight


def _starts_with_consumed(
    seq: AlignedSequence, t: dict, steps: _Steps, rows: np.ndarray, cand: np.ndarray, vmap: VocabMap
) -> np.ndarray:
    """For rows at a teacher token the student entered mid-way: candidates beginning with the
    bytes already consumed. Compares packed 8-byte heads; longer prefixes go bytewise."""
    target = steps.target[rows]
    begin = t["teacher_starts"][steps.token[rows]]
    size = t["consumed"][target]
    short = size <= 8
    heads = np.zeros(len(rows), dtype=np.uint64)
    for i in np.nonzero(short)[0].tolist():
        heads[i] = int.from_bytes(seq.text[begin[i] : begin[i] + size[i]].ljust(8, b"\0"), "big")
    shift = (64 - 8 * np.minimum(size, 8)).astype(np.uint64)[:, None]
    fits = (vmap.teacher_head[cand] >> shift) == (heads[:, None] >> shift)
    fits &= vmap.teacher_length[cand] >= size[:, None]
    for i in np.nonzero(~short)[0].tolist():
        consumed = seq.text[begin[i] : begin[i] + size[i]]
        data = vmap.teacher.token_bytes
        fits[i] = [w < len(data) and data[w].startswith(consumed) for w in cand[i].tolist()]
    return fits & ~vmap.teacher_special[cand]


def _map_inside(
    seq: AlignedSequence,
    t: dict,
    steps: _Steps,
    rows: np.ndarray,
    cand: np.ndarray,
    todo: np.ndarray,
    vmap: VocabMap,
) -> np.ndarray:
    """Student piece for candidates whose continuation starts inside the student token: the
    longest student prefix of (path so far + candidate bytes - consumed bytes)."""
    student = np.full(cand.shape, -1, dtype=np.int64)
    memo: dict[bytes, int] = {}
    teacher, outside = vmap.teacher, len(vmap.teacher)
    for i, row in enumerate(rows.tolist()):
        target, token = steps.target[row], steps.token[row]
        start, token_start = int(t["start"][target]), int(t["teacher_starts"][token])
        path = seq.text[start:token_start]  # empty at depth 0
        skip = int(t["consumed"][target]) if steps.depth[row] == 0 else 0
        for col in np.nonzero(todo[i])[0].tolist():
            w = int(cand[i, col])
            if w == outside:
                continue  # an id past the teacher's vocabulary has no bytes
            # A special token after part of the student token: the student first writes the path.
            rest = path if teacher.is_special[w] else path + teacher.token_bytes[w][skip:]
            if rest not in memo:
                memo[rest] = vmap.longest_piece(rest) if rest else -1
            student[i, col] = memo[rest]
    return student


def project(
    seq: AlignedSequence,
    top_ids: torch.Tensor | np.ndarray,
    top_logprobs: torch.Tensor | np.ndarray,
    vmap: VocabMap,
    k: int | None = None,
    end_pair: tuple[int, int] | None = None,
) -> SparseTargets:
    """Student-side targets for `seq` from the teacher's top-k rows `[len(teacher_ids), k]`.

    `end_pair` is (teacher end-of-turn id, student end-of-turn id), by default the last ids of
    the two sequences when the rendering has them. Each output row keeps the `k` (default: the
    teacher's k) most probable student ids; unused slots hold ids the row does not list, with
    log-prob -inf."""
    top_ids = np.asarray(_on_cpu(top_ids), dtype=np.int64)
    probs = np.exp(np.asarray(_on_cpu(top_logprobs), dtype=np.float64))
    if end_pair is None and seq.ends:
        end_pair = (int(seq.teacher_ids[-1]), int(seq.student_ids[-1]))
    t = _student_targets(seq)
    steps = _steps(seq, t, top_ids.shape[0])
    cand, q = vmap.clip_ids(top_ids[steps.teacher_row]), probs[steps.teacher_row]
    observed = seq.teacher_ids[
        np.minimum(seq.teacher_start + steps.token, len(seq.teacher_ids) - 1)
    ]
    is_observed = top_ids[steps.teacher_row] == observed[:, None]
    carried = is_observed & (steps.token != t["last"][steps.target])[:, None]
    student, consistent = _map_candidates(seq, t, steps, cand, is_observed, carried, vmap, end_pair)
    weight = _path_weights(steps.depth, np.where(is_observed, q, 0.0).sum(1))
    mass = weight[:, None] * q * consistent
    placed = (student >= 0) & ~carried & consistent
    own_tail = _own_tail(q, q * consistent, steps, t)
    unplaced = np.where(placed | carried, 0.0, mass).sum(1) + weight * own_tail
    n_targets = len(t["start"])
    broken = np.bincount(steps.target, weights=~steps.valid, minlength=n_targets) > 0
    hit_rows = np.nonzero(placed)[0]
    merged = _merge(steps.target[hit_rows], student[placed], mass[placed], len(vmap.student))
    lost = np.bincount(steps.target, weights=unplaced, minlength=n_targets)
    out_row = t["index"] - 1
    keep = ~broken & t["usable"] & (out_row >= 0)
    return _top_k(merged, lost, keep, out_row, len(seq.student_ids), k or top_ids.shape[1])


def _on_cpu(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values


def _own_tail(probs: np.ndarray, consistent_mass: np.ndarray, steps: _Steps, t: dict):
    """The teacher's mass outside its top-k at each step; where the student entered the token
    mid-way, only the share that is as consistent as the top-k (all of it if the top-k is empty)."""
    tail = np.clip(1.0 - probs.sum(1), 0.0, None)
    top = 1.0 - tail
    share = np.where(top > 1e-12, consistent_mass.sum(1) / np.maximum(top, 1e-12), 1.0)
    entered = (steps.depth == 0) & (t["consumed"][steps.target] > 0)
    return np.where(entered, tail * np.minimum(share, 1.0), tail)


def _map_candidates(seq, t, steps, cand, is_observed, carried, vmap, end_pair):
    """Student id for every candidate of every step (-1: no place) and its consistency."""
    student = vmap.piece[cand]
    if end_pair is not None:
        student = np.where(cand == end_pair[0], end_pair[1], student)
    final = is_observed & ~carried
    student = np.where(final, seq.student_ids[t["index"][steps.target]][:, None], student)
    consistent = np.ones(cand.shape, dtype=bool)
    entered = (steps.depth == 0) & (t["consumed"][steps.target] > 0) & steps.valid
    rows = np.nonzero(entered)[0]
    if len(rows):
        consistent[rows] = _starts_with_consumed(seq, t, steps, rows, cand[rows], vmap)
    rows = np.nonzero((entered | (steps.depth > 0)) & steps.valid)[0]
    if len(rows):
        todo = ~is_observed[rows] & consistent[rows]
        inside = _map_inside(seq, t, steps, rows, cand[rows], todo, vmap)
        student[rows] = np.where(todo, inside, student[rows])
    return student, consistent


def _merge(target, student, mass, vocab_size):
    """Sum the mass of each (target, student id): several candidates often share a piece."""
    key = target * vocab_size + student
    unique, inverse = np.unique(key, return_inverse=True)
    return unique // vocab_size, unique % vocab_size, np.bincount(inverse, weights=mass)


def _top_k(merged, lost, keep, out_row, n_rows, k):
    """Keep the k largest entries per target, normalise, and lay them out by student row."""
    target, sid, mass = merged
    total = np.bincount(target, weights=mass, minlength=len(lost)) + lost
    order = np.lexsort((-mass, target))
    target, sid, mass = target[order], sid[order], mass[order]
    rank = np.arange(len(target)) - np.searchsorted(target, target, side="left")
    kept = rank < k
    dropped = np.bincount(target[~kept], weights=mass[~kept], minlength=len(lost))
    live = keep & (total > 0)
    ok = kept & live[target]
    ids = np.zeros((n_rows, k), dtype=np.int64)
    logprobs = np.full((n_rows, k), -np.inf)
    rows = out_row[target[ok]]
    ids[rows, rank[ok]] = sid[ok]
    with np.errstate(divide="ignore"):
        logprobs[rows, rank[ok]] = np.log(mass[ok] / total[target[ok]])
    _pad_distinct(ids, np.bincount(rows, minlength=n_rows))
    tail = np.zeros(n_rows)
    tail[out_row[live]] = (lost[live] + dropped[live]) / total[live]
    mask = np.zeros(n_rows, dtype=bool)
    mask[out_row[live]] = True
    return SparseTargets(
        ids=torch.from_numpy(ids),
        logprobs=torch.from_numpy(logprobs.astype(np.float32)),
        tail=torch.from_numpy(tail.astype(np.float32)),
        mask=torch.from_numpy(mask),
    )


def _pad_distinct(ids: np.ndarray, filled: np.ndarray) -> None:
    """Fill each row past its `filled` entries with ids it does not list (log-prob -inf):
    losses reject a row that lists an id twice."""
    n_rows, k = ids.shape
    used = np.zeros((n_rows, 2 * k), dtype=bool)
    listed = np.arange(k)[None, :] < filled[:, None]
    rows, cols = np.nonzero(listed & (ids < 2 * k))
    used[rows, ids[rows, cols]] = True
    spare = np.argsort(used, axis=1, kind="stable")  # unused ids first, ascending
    rows, cols = np.nonzero(~listed)
    ids[rows, cols] = spare[rows, cols - filled[rows]]


def tail_share(targets: SparseTargets) -> float:
    """Mean probability mass the projection left in the tail, over the rows in the loss."""
    if not bool(targets.mask.any()):
        return 0.0
    return float(targets.tail[targets.mask].double().mean())
