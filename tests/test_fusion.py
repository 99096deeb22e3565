"""Fusion of projected teacher targets (`polydistill.fusion`) against dense float64 references.

The references build each teacher's distribution over the whole student vocabulary from its
sparse row and compute the fused distribution directly: for `mix` the mixture of the listed
masses with the tails kept as tail; for `product` the normalised weighted geometric mean with
each tail spread evenly over the ids its teacher does not list (the module docstring's rule).
The fused rows are float32 (the engine's target format), so they match to float32 rounding.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polydistill import fusion
from polydistill.errors import UserError
from polydistill.targets import SparseTargets

FLOAT32_RTOL = 2e-6  # the fused rows are float32; the references are float64


def random_targets(
    rng: np.random.Generator, positions: int, vocab: int, k: int, tail_floor: float
) -> SparseTargets:
    """Rows with 0..k listed ids (the other slots hold unlisted ids at -inf, as the projection
    pads), listed probabilities plus tail summing to 1, tail >= `tail_floor`; some rows masked."""
    ids = np.zeros((positions, k), dtype=np.int64)
    logprobs = np.full((positions, k), -np.inf)
    tail = np.zeros(positions)
    for row in range(positions):
        ids[row] = rng.permutation(vocab)[:k]
        listed = int(rng.integers(0, k + 1))
        tail[row] = max(tail_floor, float(rng.uniform(0, 0.6)) if rng.random() < 0.7 else 0.0)
        if listed == 0:
            tail[row] = 1.0
        weights = rng.gamma(0.5, size=listed) + 1e-3
        probs = (1.0 - tail[row]) * weights / weights.sum()
        logprobs[row, :listed] = np.sort(np.log(probs))[::-1]
    tail32 = torch.tensor(tail, dtype=torch.float32)
    # the tail is recomputed from the float32 log-probs, so every input row sums to 1 in float64
    listed32 = torch.tensor(logprobs, dtype=torch.float32)
    tail32 = (1.0 - listed32.double().exp().sum(1)).clamp_min(0.0).float()
    mask = torch.from_numpy(rng.random(positions) < 0.85)
    return SparseTargets(torch.from_numpy(ids), listed32, tail32, mask)


def dense_listed(t: SparseTargets, vocab: int) -> np.ndarray:
    """`[positions, vocab]` float64: each row's listed probabilities, zero elsewhere."""
    out = np.zeros((len(t), vocab))
    probs = t.logprobs.double().exp().numpy()
    for row in range(len(t)):
        np.add.at(out[row], t.ids[row].numpy(), probs[row])
    return out


def dense_full(t: SparseTargets, vocab: int) -> np.ndarray:
    """`[positions, vocab]` float64: listed probabilities, the tail spread evenly elsewhere."""
    listed = dense_listed(t, vocab)
    is_listed = np.zeros((len(t), vocab), dtype=bool)
    finite = torch.isfinite(t.logprobs).numpy()
    for row in range(len(t)):
        is_listed[row, t.ids[row].numpy()[finite[row]]] = True
    spread = t.tail.double().numpy() / (vocab - is_listed.sum(1))
    return np.where(is_listed, listed, spread[:, None])


def voting_weights(targets, weights: np.ndarray) -> np.ndarray:
    present = np.stack([t.mask.numpy() for t in targets]).astype(np.float64)
    kept = weights * present
    total = kept.sum(0)
    return np.divide(kept, total, out=np.zeros_like(kept), where=total > 0)


def reference_mix(targets, weights: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(listed mass `[positions, vocab]`, tail `[positions]`) of sum_t w_t p_t, tails as tail."""
    w = voting_weights(targets, weights)
    mass = sum(w[i][:, None] * dense_listed(t, vocab) for i, t in enumerate(targets))
    tail = sum(w[i] * t.tail.double().numpy() for i, t in enumerate(targets))
    return mass, tail


def reference_product(targets, weights: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(prod_t p_t^w_t normalised over the vocabulary, zero tail)."""
    w = voting_weights(targets, weights)
    log_q = sum(w[i][:, None] * np.log(dense_full(t, vocab)) for i, t in enumerate(targets))
    q = np.exp(log_q - log_q.max(1, keepdims=True))
    return q / q.sum(1, keepdims=True), np.zeros(len(q))


def said_by_voters(targets, weights: np.ndarray, vocab: int) -> np.ndarray:
    """`[positions, vocab]`: the ids some voting teacher lists (finite log-prob)."""
    w = voting_weights(targets, weights)
    said = np.zeros((len(targets[0]), vocab), dtype=bool)
    for i, t in enumerate(targets):
        finite = torch.isfinite(t.logprobs).numpy()
        for row in np.nonzero(w[i] > 0)[0]:
            said[row, t.ids[row].numpy()[finite[row]]] = True
    return said


def assert_fused_matches(fused: SparseTargets, mass, tail, k: int, live, candidates) -> None:
    """The fused rows list the k most probable `candidates` of the reference distribution `mass`
    (any of tied ones) with exactly their reference probabilities; everything else is tail."""
    assert fused.k == k and torch.equal(fused.mask, torch.from_numpy(live))
    probs = fused.logprobs.double().exp().numpy()
    for row in np.nonzero(live)[0]:
        ids = fused.ids[row].numpy()
        kept = np.isfinite(fused.logprobs[row].numpy())
        assert candidates[row][ids[kept]].all()
        np.testing.assert_allclose(probs[row][kept], mass[row][ids[kept]], rtol=FLOAT32_RTOL)
        unlisted = np.ones(mass.shape[1], dtype=bool)
        unlisted[ids[kept]] = False
        floor = probs[row][kept].min() if kept.all() else 0.0
        passed_over = mass[row][unlisted & candidates[row]]
        assert passed_over.max(initial=0.0) <= floor * (1 + FLOAT32_RTOL) + 1e-12
        expected_tail = tail[row] + mass[row][unlisted].sum()
        assert abs(float(fused.tail[row]) - expected_tail) <= 1e-6 * max(expected_tail, 1e-3)


def assert_valid(fused: SparseTargets, vocab: int) -> None:
    """Non-negative, sums to 1 with the tail, ids distinct and in the vocabulary."""
    live = fused.mask
    assert bool(((fused.ids >= 0) & (fused.ids < vocab)).all())
    assert all(len(set(row.tolist())) == fused.k for row in fused.ids)
    assert not bool(torch.isnan(fused.logprobs).any()) and bool((fused.logprobs <= 0).all())
    assert bool((fused.tail >= 0).all()) and bool((fused.tail[~live] == 0).all())
    total = fused.logprobs[live].double().exp().sum(1) + fused.tail[live].double()
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=2e-6)
    assert bool((fused.logprobs[~live] == float("-inf")).all())


@st.composite
def fusion_cases(draw, tail_floor: float = 0.0):
    seed = draw(st.integers(0, 2**31 - 1))
    teachers = draw(st.integers(1, 3))
    positions = draw(st.integers(1, 5))
    vocab = draw(st.integers(4, 40))
    k = draw(st.integers(1, vocab - 1))
    fused_k = draw(st.integers(1, k))  # a union of rows of k distinct ids has k distinct ids
    rng = np.random.default_rng(seed)
    targets = [random_targets(rng, positions, vocab, k, tail_floor) for _ in range(teachers)]
    weights = rng.dirichlet(np.full(teachers, 0.7), size=positions).T
    if draw(st.booleans()):  # hard routing: one-hot columns
        weights = np.eye(teachers)[rng.integers(0, teachers, positions)].T
    return targets, weights, vocab, fused_k


def live_positions(targets, weights: np.ndarray) -> np.ndarray:
    return voting_weights(targets, weights).sum(0) > 0


@settings(max_examples=150, deadline=None)
@given(fusion_cases())
def test_mix_equals_the_dense_mixture(case):
    targets, weights, vocab, k = case
    fused = fusion.mix(targets, torch.from_numpy(weights), k)
    assert_valid(fused, vocab)
    mass, tail = reference_mix(targets, weights, vocab)
    live, said = live_positions(targets, weights), said_by_voters(targets, weights, vocab)
    assert_fused_matches(fused, mass, tail, k, live, said)


@settings(max_examples=150, deadline=None)
@given(fusion_cases(tail_floor=1e-3))
def test_product_equals_the_dense_normalised_geometric_mean(case):
    """Tails stay above 1e-3 so that no unlisted id has probability near the module's 1e-30
    floor, where a float64 reference and the floored logarithm part ways by design."""
    targets, weights, vocab, k = case
    fused = fusion.product(targets, torch.from_numpy(weights), k, vocab)
    assert_valid(fused, vocab)
    q, tail = reference_product(targets, weights, vocab)
    live, said = live_positions(targets, weights), said_by_voters(targets, weights, vocab)
    assert_fused_matches(fused, q, tail, k, live, said)


def as_rows(t: SparseTargets, row: int) -> dict[int, float]:
    """A row's listed ids and probabilities, order-free."""
    finite = torch.isfinite(t.logprobs[row])
    ids, probs = t.ids[row][finite].tolist(), t.logprobs[row][finite].double().exp().tolist()
    return dict(zip(ids, probs, strict=True))


@pytest.mark.parametrize("combine", ["mix", "product"])
@settings(max_examples=60, deadline=None)
@given(case=fusion_cases(tail_floor=1e-3))
def test_one_teacher_of_weight_one_is_returned_unchanged(combine, case):
    targets, _, vocab, _ = case
    (target,) = targets[:1]
    k = target.k
    weights = torch.ones((1, len(target)), dtype=torch.float64)
    if combine == "mix":
        fused = fusion.mix([target], weights, k)
    else:
        fused = fusion.product([target], weights, k, vocab)
    assert torch.equal(fused.mask, target.mask)
    for row in np.nonzero(target.mask.numpy())[0]:
        got, want = as_rows(fused, row), as_rows(target, row)
        # product spreads the tail over every unlisted id, so a listed id of probability below
        # that share is outranked only by ties; mix keeps the row as it was
        assert got.keys() == want.keys(), (got, want)
        np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=2e-6)
        torch.testing.assert_close(fused.tail[row], target.tail[row], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("combine", ["mix", "product"])
@settings(max_examples=60, deadline=None)
@given(case=fusion_cases(tail_floor=1e-3))
def test_masked_teachers_do_not_vote_and_the_rest_renormalise(combine, case):
    """Where teacher 0 is masked out, the fused row is the fusion of the others alone with
    their weights renormalised, whatever teacher 0's row holds."""
    targets, weights, vocab, k = case
    if len(targets) < 2:
        return
    first = targets[0]
    silenced = SparseTargets(first.ids, first.logprobs, first.tail, torch.zeros_like(first.mask))
    rest = np.asarray(weights[1:])
    total = rest.sum(0)
    at = total > 0
    if not at.any():
        return

    def fuse(ts, w):
        w = torch.from_numpy(np.ascontiguousarray(w))
        return fusion.mix(ts, w, k) if combine == "mix" else fusion.product(ts, w, k, vocab)

    def at_examples(t: SparseTargets) -> SparseTargets:
        return SparseTargets(t.ids[at], t.logprobs[at], t.tail[at], t.mask[at])

    with_silent = fuse([at_examples(t) for t in [silenced, *targets[1:]]], weights[:, at])
    without = fuse([at_examples(t) for t in targets[1:]], rest[:, at] / total[at])
    assert torch.equal(with_silent.mask, without.mask)
    for row in np.nonzero(without.mask.numpy())[0]:
        got, want = as_rows(with_silent, row), as_rows(without, row)
        common = sorted(set(got) & set(want))
        np.testing.assert_allclose([got[i] for i in common], [want[i] for i in common], rtol=1e-6)
        assert abs(sum(got.values()) - sum(want.values())) < 1e-5


@settings(max_examples=100, deadline=None)
@given(fusion_cases())
def test_voting_renormalises_over_present_teachers(case):
    targets, weights, _, _ = case
    got = fusion.voting(targets, torch.from_numpy(weights)).numpy()
    np.testing.assert_allclose(got, voting_weights(targets, weights), rtol=1e-12, atol=0)
    live = live_positions(targets, weights)
    np.testing.assert_allclose(got.sum(0)[live], 1.0, rtol=1e-12)
    assert (got.sum(0)[~live] == 0).all()
    assert torch.equal(
        fusion.supplied_mass(targets, torch.from_numpy(weights)), torch.from_numpy(got)
    )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.floats(0.0, 30.0), min_size=3, max_size=3), min_size=1, max_size=4).map(
        lambda rows: np.asarray(rows).T
    ),
    st.floats(0.01, 5.0),
)
def test_evidence_weights_are_a_softmax_of_minus_bits_per_byte_over_temperature(bpb, t):
    got = fusion.evidence_weights(torch.from_numpy(bpb), t).numpy()
    logits = -bpb / t
    expected = np.exp(logits - logits.max(0))
    expected /= expected.sum(0)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)
    # the teacher with the fewest bits per byte gets the most weight
    np.testing.assert_array_equal(got[bpb.argmin(0), np.arange(bpb.shape[1])], got.max(0))


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_evidence_and_confidence_need_a_positive_temperature(temperature):
    with pytest.raises(UserError, match="temperature must be positive"):
        fusion.evidence_weights(torch.zeros((2, 3)), temperature)
    with pytest.raises(UserError, match="temperature must be positive"):
        fusion.confidence_weights([], temperature)


def test_confidence_weights_are_a_softmax_of_log_top1_over_temperature():
    rng = np.random.default_rng(0)
    targets = [random_targets(rng, 6, 20, 4, 0.01) for _ in range(3)]
    got = fusion.confidence_weights(targets, 0.5).numpy()
    top1 = np.stack([t.logprobs.double().amax(1).clamp_min(-1e4).numpy() for t in targets])
    expected = np.exp(top1 / 0.5 - (top1 / 0.5).max(0))
    np.testing.assert_allclose(got, expected / expected.sum(0), rtol=1e-12)


def test_route_weights_send_each_example_to_its_teacher():
    names = ["gemma", "qwen", "gptoss"]
    routes = {"strings": "gemma", "facts": "qwen", "arithmetic": "gptoss"}
    got = fusion.route_weights(names, ["facts", "arithmetic", "facts", "strings"], routes)
    expected = [[0, 0, 0, 1], [1, 0, 1, 0], [0, 1, 0, 0]]
    assert got.tolist() == expected and got.dtype == torch.float64


def test_route_weights_refuse_an_unknown_teacher_or_an_unrouted_domain():
    names = ["gemma", "qwen"]
    with pytest.raises(UserError, match=r"^fusion\.routes: unknown teacher\(s\) \['llama'\]"):
        fusion.route_weights(names, ["facts"], {"facts": "llama"})
    with pytest.raises(UserError, match=r"^fusion\.routes has no teacher for \['strings'\]"):
        fusion.route_weights(names, ["facts", "strings"], {"facts": "qwen"})


def test_fixed_weights_are_the_configured_ones_for_every_example():
    got = fusion.fixed_weights(["a", "b", "c"], {"a": 0.25, "c": 0.75}, 3)
    assert got.tolist() == [[0.25] * 3, [0.0] * 3, [0.75] * 3]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"a": 0.5, "b": 0.4}, r"^fusion\.weights must be non-negative and sum to 1"),
        ({"a": 1.5, "b": -0.5}, r"^fusion\.weights must be non-negative and sum to 1"),
        ({"a": 0.5, "z": 0.5}, r"^fusion\.weights: unknown teacher\(s\) \['z'\]"),
    ],
)
def test_fixed_weights_refuse_bad_weights(weights, message):
    with pytest.raises(UserError, match=message):
        fusion.fixed_weights(["a", "b"], weights, 2)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.floats(0.0, 20.0), min_size=2, max_size=2), min_size=1, max_size=4)
    .filter(lambda rows: all(len(set(col)) == len(col) for col in zip(*rows, strict=True)))
    .map(lambda rows: np.asarray(rows).T)
)
def test_gold_weights_mince_is_one_hot_at_the_argmin_and_avgce_a_softmax(ce):
    """`ce` `[teachers, examples]`, no ties within an example (argmin would be arbitrary)."""
    mince = fusion.gold_weights(torch.from_numpy(ce), "mince").numpy()
    assert mince.shape == ce.shape
    np.testing.assert_array_equal(mince, np.eye(len(ce))[ce.argmin(0)].T)
    avgce = fusion.gold_weights(torch.from_numpy(ce), "avgce").numpy()
    expected = np.exp(-ce - (-ce).max(0))
    np.testing.assert_allclose(avgce, expected / expected.sum(0), rtol=1e-12)


def test_per_position_repeats_each_example_weight_over_its_positions():
    weights = torch.tensor([[0.2, 0.7, 1.0], [0.8, 0.3, 0.0]], dtype=torch.float64)
    got = fusion.per_position(weights, [0, 2, 2, 5])
    assert got.tolist() == [[0.2, 0.2, 1.0, 1.0, 1.0], [0.8, 0.8, 0.0, 0.0, 0.0]]


def test_rows_and_weights_of_different_sizes_are_refused():
    rng = np.random.default_rng(1)
    a, b = random_targets(rng, 3, 10, 2, 0.0), random_targets(rng, 4, 10, 2, 0.0)
    with pytest.raises(ValueError, match="targets of"):
        fusion.mix([a, b], torch.full((2, 3), 0.5, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="targets of"):
        fusion.mix([a], torch.ones((1, 4), dtype=torch.float64), 2)
