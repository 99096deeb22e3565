"""Fusion of several teachers' targets, already projected into the student's vocabulary.

    weights = evidence_weights(bits_per_byte, temperature=0.05)     # [teachers, examples]
    fused = mix(per_teacher_targets, per_position(weights, offsets), k=32)

Every strategy is a small function that returns weights over the teachers (columns sum to 1):
per example (`uniform_weights`, `fixed_weights`, `evidence_weights`, `route_weights`,
`gold_weights`) or per position (`confidence_weights`). Two combiners turn weights into one
target in the engine's format:

- `mix`: the mixture in probability space, sum_t w_t p_t. The union of the teachers' listed ids
  is summed per id, the k most probable kept, everything else (their tails and what did not fit)
  goes to the fused tail. A teacher's weight is exactly the share of target mass it supplied.
- `product`: the weighted product of experts, p ∝ prod_t p_t^w_t (a mean of log-probabilities).
  An id a teacher does not list gets that teacher's tail spread evenly over the ids it does not
  list, the only assumption that the sparse format allows; the fused row lists only ids that a
  voting teacher lists, and the rest of the product is its tail.

A teacher whose projected target is masked out at a position (nothing it said fits the student's
context there) does not vote there; the others' weights are renormalised, and a position where no
teacher votes stays out of the loss.

`evidence_weights` is the label-free router: a teacher that models a prompt and its own answer
in few bits per byte is at home there. Bits per byte, not per token, so that tokenizers of
different granularity compare fairly. `gold_weights` (FuseLLM's MinCE / AvgCE) reads the gold
answers and exists only as a baseline.
"""

from collections.abc import Mapping, Sequence

import torch

from polydistill.errors import UserError
from polydistill.targets import SparseTargets

STRATEGIES = ("uniform", "product", "fixed", "evidence", "confidence", "route", "mince", "avgce")
USES_GOLD = ("mince", "avgce")


def uniform_weights(teachers: int, examples: int) -> torch.Tensor:
    return torch.full((teachers, examples), 1.0 / teachers, dtype=torch.float64)


def fixed_weights(names: Sequence[str], weights: Mapping[str, float], examples: int):
    """The configured weight of each teacher, the same for every example."""
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise UserError(f"fusion.weights: unknown teacher(s) {unknown}; teachers are {list(names)}")
    values = torch.tensor([float(weights.get(n, 0.0)) for n in names], dtype=torch.float64)
    if bool((values < 0).any()) or abs(float(values.sum()) - 1.0) > 1e-6:
        raise UserError(f"fusion.weights must be non-negative and sum to 1, got {dict(weights)}")
    return values[:, None].expand(len(names), examples).clone()


def evidence_weights(bits_per_byte: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax over teachers of -bits_per_byte / temperature, per example `[teachers, examples]`."""
    if not temperature > 0:
        raise UserError(f"fusion.temperature must be positive, got {temperature}")
    return torch.softmax(-bits_per_byte.double() / temperature, dim=0)


def route_weights(
    names: Sequence[str], columns: Sequence[str], routes: Mapping[str, str]
) -> torch.Tensor:
    """Hard routing: each example goes to the teacher its column value names (MOPD-style)."""
    unknown = sorted(set(routes.values()) - set(names))
    if unknown:
        raise UserError(f"fusion.routes: unknown teacher(s) {unknown}; teachers: {list(names)}")
    missing = sorted(set(columns) - set(routes))
    if missing:
        raise UserError(f"fusion.routes has no teacher for {missing}")
    out = torch.zeros((len(names), len(columns)), dtype=torch.float64)
    for i, value in enumerate(columns):
        out[names.index(routes[value]), i] = 1.0
    return out


def gold_weights(gold_bits_per_byte: torch.Tensor, how: str) -> torch.Tensor:
    """FuseLLM's baselines from each teacher's cross-entropy on the gold answer: `mince` gives
    all weight to the lowest, `avgce` weights by softmax(-cross-entropy)."""
    if how == "mince":
        best = gold_bits_per_byte.argmin(dim=0)
        return torch.nn.functional.one_hot(best, len(gold_bits_per_byte)).T.double()
    return torch.softmax(-gold_bits_per_byte.double(), dim=0)


def confidence_weights(targets: Sequence[SparseTargets], temperature: float) -> torch.Tensor:
    """Per position, softmax over teachers of log(top-1 probability) / temperature."""
    if not temperature > 0:
        raise UserError(f"fusion.temperature must be positive, got {temperature}")
    top1 = torch.stack([t.logprobs.double().amax(dim=-1) for t in targets])
    return torch.softmax(top1.clamp_min(-1e4) / temperature, dim=0)


def per_position(weights: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
    """Per-example weights `[teachers, examples]` repeated over each example's positions."""
    lengths = torch.diff(torch.as_tensor(offsets))
    return weights.repeat_interleave(lengths, dim=1)


def voting(targets: Sequence[SparseTargets], weights: torch.Tensor) -> torch.Tensor:
    """Weights with teachers masked out at a position removed and the rest renormalised."""
    present = torch.stack([t.mask for t in targets]).double()
    kept = weights.double() * present
    total = kept.sum(dim=0, keepdim=True)
    return torch.where(total > 0, kept / total.clamp_min(1e-300), 0.0)


def _check_same_rows(targets: Sequence[SparseTargets], weights: torch.Tensor) -> None:
    sizes = {len(t) for t in targets}
    if len(sizes) != 1 or weights.shape != (len(targets), len(targets[0])):
        raise ValueError(f"targets of {sorted(sizes)} rows and weights {tuple(weights.shape)}")


def _merge_ids(ids: torch.Tensor, mass: torch.Tensor):
    """Per row, sum `mass` over equal ids: `(ids, mass)` sorted by id, repeats marked -1 so
    that they rank below every distinct id (each teacher lists k distinct ids, so a union
    always has k)."""
    ids, order = ids.sort(dim=1)
    mass = mass.gather(1, order)
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    group = first.long().cumsum(dim=1) - 1
    summed = torch.zeros_like(mass).scatter_add_(1, group, mass)
    return ids, torch.where(first, summed.gather(1, group), -1.0)


def _keep_top(ids, mass, rest, k: int, live: torch.Tensor) -> SparseTargets:
    """The k largest merged entries as log-probs of the row total; the rest joins the tail."""
    total = mass.clamp_min(0.0).sum(dim=1) + rest
    top = mass.topk(min(k, mass.shape[1]), dim=1)
    kept_ids = ids.gather(1, top.indices)
    kept = top.values.clamp_min(0.0)
    norm = total.clamp_min(1e-300)[:, None]
    logprobs = torch.log(kept / norm)
    tail = ((total - kept.sum(dim=1)) / norm[:, 0]).clamp(0.0, 1.0)
    logprobs = torch.where(live[:, None], logprobs, float("-inf"))
    return SparseTargets(kept_ids, logprobs.float(), torch.where(live, tail, 0.0).float(), live)


def mix(targets: Sequence[SparseTargets], weights: torch.Tensor, k: int) -> SparseTargets:
    """sum_t w_t p_t per position (`weights` `[teachers, positions]`); see the module."""
    _check_same_rows(targets, weights)
    w = voting(targets, weights)
    ids = torch.cat([t.ids for t in targets], dim=1)
    mass = torch.cat([t.logprobs.double().exp() * w[i][:, None] for i, t in enumerate(targets)], 1)
    rest = sum(t.tail.double() * w[i] for i, t in enumerate(targets))
    merged_ids, merged = _merge_ids(ids, mass)
    return _keep_top(merged_ids, merged, rest, k, w.sum(dim=0) > 0)


def product(
    targets: Sequence[SparseTargets], weights: torch.Tensor, k: int, vocab_size: int
) -> SparseTargets:
    """prod_t p_t^w_t, normalised over the student vocabulary; see the module."""
    _check_same_rows(targets, weights)
    w = voting(targets, weights)
    ids = torch.cat([t.ids for t in targets], dim=1)
    union, _ = _merge_ids(ids, torch.ones_like(ids, dtype=torch.float64))
    distinct = torch.ones_like(union, dtype=torch.bool)
    distinct[:, 1:] = union[:, 1:] != union[:, :-1]
    log_q = torch.zeros(union.shape, dtype=torch.float64)
    log_rest = torch.zeros(len(union), dtype=torch.float64)
    # An id only padding slots (-inf) or silent teachers list is one of the `rest`: listing it
    # with the spread share would train the student towards arbitrary ids.
    said = torch.zeros_like(union, dtype=torch.bool)
    for i, t in enumerate(targets):
        unlisted = vocab_size - torch.isfinite(t.logprobs).sum(dim=1)
        spread = (t.tail.double() / unlisted.clamp_min(1)).clamp_min(1e-30).log()
        listed = _is_listed_at(union, t)
        log_p = torch.where(listed, _listed_logprobs(union, t), spread[:, None])
        log_q += w[i][:, None] * log_p.clamp_min(-1e4)
        log_rest += w[i] * spread
        said |= listed & (w[i][:, None] > 0)
    candidate = distinct & said
    others = (vocab_size - candidate.sum(dim=1)).clamp_min(0).double()
    peak = torch.maximum(log_q.masked_fill(~candidate, -torch.inf).amax(dim=1), log_rest)
    # ids in no one's row rank below the candidates, repeats below them (k stay distinct)
    mass = torch.where(candidate, (log_q - peak[:, None]).exp(), torch.where(distinct, -0.5, -1.0))
    rest = others * (log_rest - peak).exp()
    return _keep_top(union, mass, rest, k, w.sum(dim=0) > 0)


def _sorted(t: SparseTargets) -> tuple[torch.Tensor, torch.Tensor]:
    ids, order = t.ids.sort(dim=1)
    return ids, t.logprobs.double().gather(1, order)


def _is_listed_at(union: torch.Tensor, t: SparseTargets) -> torch.Tensor:
    ids, logprobs = _sorted(t)
    at = torch.searchsorted(ids, union).clamp_max(ids.shape[1] - 1)
    return (ids.gather(1, at) == union) & torch.isfinite(logprobs.gather(1, at))


def _listed_logprobs(union: torch.Tensor, t: SparseTargets) -> torch.Tensor:
    ids, logprobs = _sorted(t)
    at = torch.searchsorted(ids, union).clamp_max(ids.shape[1] - 1)
    return logprobs.gather(1, at)


def supplied_mass(targets: Sequence[SparseTargets], weights: torch.Tensor) -> torch.Tensor:
    """Each teacher's share of the fused target at each position `[teachers, positions]`."""
    return voting(targets, weights)
