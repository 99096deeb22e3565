"""Distillation losses: the chunked fused path against the dense references, the references against
independent formulas and TRL's GKD loss, the tail bucket, padding, masks and bad input."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from polydistill.errors import UserError
from polydistill.losses import (
    default_memory_budget_mb,
    distill_loss,
    distill_loss_parts,
    divergence,
    full_vocab,
    reference_distill_loss,
)
from polydistill.losses.chunked import chunk_sizes, even_splits
from polydistill.losses.divergences import KINDS
from polydistill.targets import (
    MAX_PADDING_ROWS,
    SparseTargets,
    targets_from_logits,
)

HIDDEN = 16


def make_case(rows=37, vocab=301, padding=0, seed=0, dtype=torch.float32, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, HIDDEN, generator=gen, dtype=dtype)
    weight = torch.randn(vocab + padding, HIDDEN, generator=gen, dtype=dtype) * (scale / 4)
    teacher = torch.randn(rows, vocab + padding, generator=gen, dtype=dtype) * scale
    mask = torch.rand(rows, generator=gen) > 0.25
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    labels[::4] = -100
    return hidden, weight, teacher, mask, labels


def grads_of(loss, *inputs):
    return torch.autograd.grad(loss, list(inputs))


def assert_grads_close(actual, expected, tol):
    for got, want in zip(actual, expected, strict=True):
        err = (got.double() - want.double()).abs().max() / want.double().abs().max()
        assert err <= tol, f"gradient max error {float(err):.2e} > {tol:.0e}"


CONFIGS = [
    # (k, temperature, ce_weight, padding rows, masked)
    (None, 1.0, 0.0, 0, False),
    (None, 2.0, 0.0, 0, True),
    (None, 0.7, 0.3, 128, True),
    (7, 1.0, 0.0, 0, True),
    (7, 2.0, 0.0, 128, True),
    (7, 1.0, 0.3, 0, False),
    (40, 1.5, 0.5, 0, True),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("k", "temperature", "ce_weight", "padding", "masked"), CONFIGS)
def test_chunked_float32_equals_dense_reference(kind, k, temperature, ce_weight, padding, masked):
    vocab = 301
    hidden, weight, teacher, mask, labels = make_case(vocab=vocab, padding=padding)
    mask = mask if masked else torch.ones_like(mask)
    targets = targets_from_logits(teacher, k, temperature, vocab_size=vocab, mask=mask)
    args = dict(beta=0.3, temperature=temperature, ce_weight=ce_weight, labels=labels)
    args |= dict(vocab_size=vocab)
    hidden.requires_grad_()
    weight.requires_grad_()
    # A small budget forces many chunks and sub-chunks.
    chunked = distill_loss(hidden, weight, targets, kind, memory_budget_mb=0.03, **args)
    dense32 = reference_distill_loss(hidden @ weight.t(), targets, kind, **args)
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    dense64 = reference_distill_loss(h64 @ w64.t(), targets, kind, **args)
    assert chunked.dtype == torch.float32
    assert abs(chunked.item() - dense32.item()) <= 1e-6 * abs(dense32.item())
    assert abs(chunked.item() - dense64.item()) <= 1e-6 * abs(dense64.item())
    # The float32 reference has gradient rounding errors of its own up to ~2e-5 (autograd through
    # log_softmax/logsumexp), so gradients are held to the reference evaluated in float64.
    assert_grads_close(grads_of(chunked, hidden, weight), grads_of(dense64, h64, w64), 1e-5)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    rows=st.integers(1, 24),
    vocab=st.integers(2, 90),
    k_fraction=st.floats(0.0, 1.0),
    temperature=st.floats(0.5, 3.0),
    ce_weight=st.sampled_from([0.0, 0.25, 1.0]),
    padding=st.integers(0, 5),
    budget_kb=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_chunked_float64_equals_reference_exactly(
    kind, rows, vocab, k_fraction, temperature, ce_weight, padding, budget_kb, seed
):
    """Any shape, top-k, mask, budget (so any chunking): the same function to float64 rounding."""
    hidden, weight, teacher, mask, labels = make_case(rows, vocab, padding, seed, torch.float64)
    k = max(1, round(k_fraction * vocab))
    targets = targets_from_logits(teacher, k, temperature, vocab_size=vocab, mask=mask)
    targets = SparseTargets(targets.ids, targets.logprobs.double(), targets.tail.double(), mask)
    args = dict(beta=0.6, alpha=0.2, temperature=temperature, ce_weight=ce_weight, labels=labels)
    args |= dict(vocab_size=vocab)
    hidden.requires_grad_()
    weight.requires_grad_()
    chunked = distill_loss(hidden, weight, targets, kind, memory_budget_mb=budget_kb / 1024, **args)
    dense = reference_distill_loss(hidden @ weight.t(), targets, kind, **args)
    assert chunked.dtype == torch.float64
    assert math.isclose(chunked.item(), dense.item(), rel_tol=1e-10, abs_tol=1e-12)
    expected = grads_of(dense, hidden, weight)
    for got, want in zip(grads_of(chunked, hidden, weight), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    rows=st.integers(1, 8),
    vocab=st.integers(2, 60),
    k_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_divergences_are_nonnegative_and_zero_at_the_teacher(kind, rows, vocab, k_fraction, seed):
    _, _, teacher, _, _ = make_case(rows, vocab, 0, seed, torch.float64, scale=3.0)
    student = torch.randn(
        rows, vocab, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    k = max(1, round(k_fraction * vocab))
    targets = targets_from_logits(teacher, k)
    targets = SparseTargets(
        targets.ids, targets.logprobs.double(), targets.tail.double(), targets.mask
    )
    assert reference_distill_loss(student, targets, kind, beta=0.4).item() >= -1e-12
    assert divergence(student, teacher, kind, beta=0.4).item() >= -1e-12
    own = targets_from_logits(teacher.float(), k)
    at_teacher = reference_distill_loss(teacher.float(), own, kind, beta=0.4).item()
    assert abs(at_teacher) <= 1e-5


def independent_divergence(lq, lp, kind, beta, alpha):
    """Textbook formulas on probabilities, per position, float64."""
    q, p = lq.exp(), lp.exp()
    if kind == "forward_kl":
        return F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
    if kind == "reverse_kl":
        return F.kl_div(lp, lq, reduction="none", log_target=True).sum(-1)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    if kind == "skew_kl":
        return (p * (p / (alpha * p + (1 - alpha) * q)).log()).sum(-1)
    return 0.5 * (p - q).abs().sum(-1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_dense_divergence_matches_textbook_formulas(kind, temperature):
    _, _, teacher, mask, _ = make_case(9, 50, dtype=torch.float64)
    student = torch.randn(9, 50, dtype=torch.float64)
    got = divergence(
        student, teacher, kind, beta=0.3, temperature=temperature, mask=mask, alpha=0.2
    )
    lq = torch.log_softmax(student / temperature, -1)
    lp = torch.log_softmax(teacher / temperature, -1)
    want = independent_divergence(lq, lp, kind, 0.3, 0.2)[mask].mean()
    assert math.isclose(got.item(), want.item(), rel_tol=1e-10)


def test_jsd_end_points_are_the_kls():
    _, _, teacher, _, _ = make_case(5, 40)
    student = torch.randn(5, 40)
    assert divergence(student, teacher, "jsd", beta=0.0) == divergence(
        student, teacher, "forward_kl"
    )
    assert divergence(student, teacher, "jsd", beta=1.0) == divergence(
        student, teacher, "reverse_kl"
    )


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_matches_trl_generalized_jsd_loss(beta, temperature):
    gkd = pytest.importorskip("trl.experimental.gkd")
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(2, 6, 120, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 6, 120, generator=gen) * 2
    labels = torch.randint(0, 120, (2, 6), generator=gen)
    labels[0, :2] = -100
    ours = divergence(student, teacher, "jsd", beta=beta, temperature=temperature, labels=labels)
    trl = gkd.GKDTrainer.generalized_jsd_loss(
        student, teacher, labels=labels, beta=beta, temperature=temperature
    )
    assert math.isclose(ours.item(), trl.item(), rel_tol=1e-6)
    assert_grads_close(grads_of(ours, student), grads_of(trl, student), 1e-5)
    # Without labels TRL's 2-D "batchmean" is also the token mean.
    flat_s, flat_t = student.reshape(12, 120), teacher.reshape(12, 120)
    trl_flat = gkd.GKDTrainer.generalized_jsd_loss(
        flat_s, flat_t, beta=beta, temperature=temperature
    )
    ours_flat = divergence(flat_s, flat_t, "jsd", beta=beta, temperature=temperature)
    assert math.isclose(ours_flat.item(), trl_flat.item(), rel_tol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_full_vocabulary_targets_give_the_dense_divergence(kind):
    """k = V targets at temperature T through distill_loss equal `divergence` at T."""
    hidden, weight, teacher, mask, _ = make_case(12, 80, dtype=torch.float64)
    targets = targets_from_logits(teacher, None, temperature=1.7, mask=mask)
    targets = SparseTargets(targets.ids, targets.logprobs.double(), targets.tail.double(), mask)
    chunked = distill_loss(hidden, weight, targets, kind, beta=0.3, temperature=1.7)
    dense = divergence(hidden @ weight.t(), teacher, kind, beta=0.3, temperature=1.7, mask=mask)
    assert math.isclose(chunked.item(), dense.item(), rel_tol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_tail_is_one_bucket_against_the_students_mass_outside_top_k(kind):
    """The k < V definition, spelled out on explicit (k + 1)-bucket distributions."""
    _, _, teacher, _, _ = make_case(6, 30, dtype=torch.float64)
    student = torch.randn(6, 30, dtype=torch.float64)
    targets = targets_from_logits(teacher, 4)
    targets = SparseTargets(
        targets.ids, targets.logprobs.double(), targets.tail.double(), targets.mask
    )
    q = torch.softmax(student, -1)
    q_top = q.gather(1, targets.ids)
    q_buckets = torch.cat([q_top, 1 - q_top.sum(1, keepdim=True)], 1)
    p_buckets = torch.cat([targets.logprobs.exp(), targets.tail[:, None]], 1)
    want = independent_divergence(q_buckets.log(), p_buckets.log(), kind, 0.5, 0.1).mean()
    got = reference_distill_loss(student, targets, kind, beta=0.5, alpha=0.1)
    assert math.isclose(got.item(), want.item(), rel_tol=1e-9)


def test_full_vocabulary_targets_sum_to_one_at_real_vocabulary_sizes():
    """Their normaliser is summed in float64: torch's float32 log_softmax is off by ~5e-6 here."""
    logits = torch.randn(4, 150_000, generator=torch.Generator().manual_seed(0)) * 3
    targets = targets_from_logits(logits)
    assert targets.logprobs.dtype == torch.float32
    assert (targets.logprobs.double().exp().sum(-1) - 1).abs().max() < 2e-6


def test_padding_rows_are_dropped_and_get_no_gradient():
    hidden, weight, teacher, mask, labels = make_case(10, 200, padding=128)
    targets = targets_from_logits(teacher, 20, vocab_size=200, mask=mask)
    weight.requires_grad_()
    padded = distill_loss(
        hidden, weight, targets, "jsd", vocab_size=200, ce_weight=0.5, labels=labels
    )
    (grad,) = grads_of(padded, weight)
    assert grad[200:].abs().max() == 0
    trimmed = distill_loss(hidden, weight[:200], targets, "jsd", ce_weight=0.5, labels=labels)
    assert math.isclose(padded.item(), trimmed.item(), rel_tol=1e-7)
    # The dense divergence accepts a teacher with padding columns (Qwen: 151,936 vs 152,064).
    student = hidden @ weight[:200].t()
    assert (
        divergence(student, teacher, "tv").item()
        == divergence(student, teacher[:, :200], "tv").item()
    )


def test_masked_positions_and_ignored_labels_do_not_count():
    hidden, weight, teacher, mask, labels = make_case(20, 60)
    targets = targets_from_logits(teacher, 10, mask=mask)
    hidden.requires_grad_()
    parts = distill_loss_parts(hidden, weight, targets, "forward_kl", ce_weight=0.25, labels=labels)
    (grad,) = grads_of(parts.total, hidden)
    idle = ~mask & (labels == -100)
    assert idle.any() and grad[idle].abs().max() == 0
    logits = hidden.detach() @ weight.t()
    ce = F.cross_entropy(logits, labels, ignore_index=-100)
    assert math.isclose(parts.cross_entropy.item(), ce.item(), rel_tol=1e-6)
    alone = distill_loss(hidden[mask], weight, select(targets, mask), "forward_kl")
    assert math.isclose(parts.divergence.item(), alone.item(), rel_tol=1e-6)
    assert math.isclose(parts.total.item(), 0.75 * alone.item() + 0.25 * ce.item(), rel_tol=1e-6)


def test_no_counted_positions_give_zero_loss_and_zero_gradients():
    hidden, weight, teacher, _, _ = make_case(4, 30)
    targets = targets_from_logits(teacher, 5, mask=torch.zeros(4, dtype=torch.bool))
    hidden.requires_grad_()
    loss = distill_loss(hidden, weight, targets, "reverse_kl")
    assert loss.item() == 0.0
    assert grads_of(loss, hidden)[0].abs().max() == 0


def test_sum_reduction_and_no_grad():
    hidden, weight, teacher, mask, _ = make_case(12, 40)
    targets = targets_from_logits(teacher, 6, mask=mask)
    mean = distill_loss(hidden, weight, targets, "tv")
    with torch.no_grad():
        total = distill_loss(hidden.requires_grad_(), weight, targets, "tv", reduction="sum")
    assert not total.requires_grad
    assert math.isclose(total.item(), mean.item() * int(mask.sum()), rel_tol=1e-6)


def test_backward_scales_by_the_upstream_gradient_once():
    hidden, weight, teacher, _, _ = make_case(10, 40)
    targets = targets_from_logits(teacher, 6)
    hidden.requires_grad_()
    (once,) = grads_of(distill_loss(hidden, weight, targets, "skew_kl"), hidden)
    loss = distill_loss(hidden, weight, targets, "skew_kl")
    (tripled,) = torch.autograd.grad(3 * loss, [hidden], retain_graph=True)
    torch.testing.assert_close(tripled, 3 * once)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        torch.autograd.grad(loss, [hidden])


def test_bfloat16_inputs_give_bfloat16_gradients_close_to_float32():
    hidden, weight, teacher, _, _ = make_case(16, 100)
    targets = targets_from_logits(teacher, 12)
    h16, w16 = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    loss16 = distill_loss(h16, w16, targets, "jsd")
    grads16 = grads_of(loss16, h16, w16)
    loss32 = distill_loss(h16.detach().float(), w16.detach().float(), targets, "jsd")
    assert all(g.dtype == torch.bfloat16 for g in grads16)
    assert math.isclose(loss16.item(), loss32.item(), rel_tol=1e-2)


def test_chunk_sizes_follow_the_memory_budget():
    vocab, row_bytes, budget = 262144, 262144 * 4, 256 * 2**20
    chunk, sub = chunk_sizes(vocab, 0, 256, 10_000)
    assert chunk == sub == budget // row_bytes
    chunk, sub = chunk_sizes(vocab, 8, 256, 10_000)
    assert chunk * row_bytes + sub * 8 * row_bytes <= budget
    assert chunk >= 0.7 * budget / row_bytes  # the chunk buffer gets most of it
    assert chunk_sizes(vocab, 8, 0.001, 10) == (1, 1)  # never below one row
    assert chunk_sizes(100, 0, 256, 7) == (7, 7)  # never above the rows there are


def test_default_budget_is_a_share_of_the_lm_head_gradient():
    """The same chunk rows at every vocabulary, more with a wider model, within the bounds."""
    rows_at = {}
    for vocab in (151936, 201088, 262144):
        budget = default_memory_budget_mb(vocab, 512)
        assert budget == pytest.approx(0.2 * vocab * 512 * 4 / 2**20)
        rows_at[vocab] = chunk_sizes(vocab, 2, budget, 10_000)[0]
    assert max(rows_at.values()) - min(rows_at.values()) <= 1
    assert 64 <= rows_at[262144] <= 128
    assert default_memory_budget_mb(262144, 4096) > default_memory_budget_mb(262144, 512)
    assert default_memory_budget_mb(500, 32) == 16.0
    assert default_memory_budget_mb(262144, 16384) == 1024.0


@given(rows=st.integers(0, 5000), most=st.integers(1, 600))
def test_even_splits_cover_the_rows_in_near_equal_pieces(rows, most):
    pieces = even_splits(rows, most)
    assert len(pieces) == -(-rows // most)
    if rows == 0:
        return
    assert pieces[0][0] == 0 and pieces[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    sizes = [stop - start for start, stop in pieces]
    assert max(sizes) <= most and max(sizes) - min(sizes) <= 1


# Each kind with the cross-entropy sharing the divergence's softmax (T = 1) or not (T = 1.3).
COMPILED_CASES = [(kind, 1.0 if i % 2 == 0 else 1.3) for i, kind in enumerate(KINDS)]
NO_COMPILER = (
    "the inductor needs a C++ compiler and the Python headers: install g++ and python3-dev "
    "(Debian/Ubuntu: apt-get install g++ python3-dev)"
)


def compiled_only(monkeypatch) -> dict[str, int]:
    """Count the kernel calls of this test alone; `assert_compiled_ran` then reads them."""
    calls = {"compiled": 0, "eager": 0}
    monkeypatch.setattr(full_vocab, "kernel_calls", calls)
    return calls


def assert_compiled_ran(calls: dict[str, int]) -> None:
    """The compiled kernel ran every call: a fallback to eager would compare eager with itself."""
    error = full_vocab.compile_error()
    assert error is None, f"torch.compile fell back to the eager kernel ({error}); {NO_COMPILER}"
    assert calls["eager"] == 0 and calls["compiled"] > 1, f"kernel calls {calls}"


@pytest.mark.parametrize(("kind", "temperature"), COMPILED_CASES)
def test_compiled_kernel_against_the_float64_reference(kind, temperature, monkeypatch):
    """The compiled full-vocabulary kernel (several sub-chunks per chunk), loss and gradients of
    hidden states and lm_head, against the dense reference in float64 on the same inputs."""
    hidden, weight, teacher, mask, labels = make_case(24, 96)
    targets = targets_from_logits(teacher, None, temperature=temperature, mask=mask)
    args = dict(beta=0.4, alpha=0.2, temperature=temperature, ce_weight=0.2, labels=labels)
    calls = compiled_only(monkeypatch)
    hidden.requires_grad_(), weight.requires_grad_()
    compiled = distill_loss(
        hidden, weight, targets, kind, compile=True, memory_budget_mb=0.02, **args
    )
    assert_compiled_ran(calls)
    h64, w64 = (t.detach().double().requires_grad_() for t in (hidden, weight))
    targets64 = SparseTargets(
        targets.ids, targets.logprobs.double(), targets.tail.double(), targets.mask
    )
    dense = reference_distill_loss(h64 @ w64.t(), targets64, kind, **args)
    assert dense.dtype == torch.float64
    # float32 against float64: measured ~5e-8 (loss) and ~5e-7 (gradients) here.
    assert math.isclose(compiled.item(), dense.item(), rel_tol=1e-6)
    assert_grads_close(grads_of(compiled, hidden, weight), grads_of(dense, h64, w64), 5e-6)


def test_compiled_kernel_fallback_is_counted_as_eager(monkeypatch):
    """When compiling fails the loss still comes (eager, with a warning), and the fallback shows
    in `kernel_calls` and `compile_error()`, which `assert_compiled_ran` fails on."""
    hidden, weight, teacher, mask, labels = make_case(24, 96)
    targets = targets_from_logits(teacher, None, temperature=1.3, mask=mask)
    args = dict(beta=0.4, temperature=1.3, ce_weight=0.2, labels=labels)
    eager = distill_loss(hidden, weight, targets, "jsd", compile=False, **args)

    def broken(*_args, **_kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(full_vocab, "_compiled", broken)
    monkeypatch.setattr(full_vocab, "_compile_error", None)
    calls = compiled_only(monkeypatch)
    with pytest.warns(RuntimeWarning, match="eager kernel"):
        fallback = distill_loss(hidden, weight, targets, "jsd", compile=True, **args)
    assert fallback.item() == eager.item()
    assert calls == {"compiled": 0, "eager": 1}
    assert "no C++ compiler" in full_vocab.compile_error()
    with pytest.raises(AssertionError, match="fell back to the eager kernel"):
        assert_compiled_ran(calls)


def select(targets: SparseTargets, rows) -> SparseTargets:
    return SparseTargets(
        targets.ids[rows], targets.logprobs[rows], targets.tail[rows], targets.mask[rows]
    )


def with_logprob(targets: SparseTargets, value: float) -> SparseTargets:
    logprobs = targets.logprobs.clone()
    logprobs[int(targets.mask.nonzero()[0]), 0] = value
    return SparseTargets(targets.ids, logprobs, targets.tail, targets.mask)


def too_wide_teacher(h, w, t):
    teacher = torch.randn(len(t), w.shape[0] + MAX_PADDING_ROWS + 1)
    return divergence(h @ w.t(), teacher, "tv")


def nan_teacher_logits(h, w, t):
    return divergence(h @ w.t(), torch.full((len(t), w.shape[0]), float("nan")), "jsd")


def repeated_ids(h, w, t):
    return distill_loss(
        h, w, SparseTargets(t.ids.clone().fill_(3), t.logprobs, t.tail, t.mask), "jsd"
    )


def label_past_vocabulary(h, w, t):
    return distill_loss(h, w, t, "jsd", ce_weight=0.5, labels=torch.full((len(t),), 10_000))


BAD_INPUTS = [
    ("vocabulary beyond padding", too_wide_teacher, "padding rows"),
    (
        "target id past the vocabulary",
        lambda h, w, t: distill_loss(h, w, t, "tv", vocab_size=10),
        "out of the student's vocabulary",
    ),
    (
        "NaN teacher log-prob",
        lambda h, w, t: distill_loss(h, w, with_logprob(t, math.nan), "jsd"),
        "NaN or \\+inf",
    ),
    (
        "+inf teacher log-prob",
        lambda h, w, t: distill_loss(h, w, with_logprob(t, math.inf), "jsd"),
        "NaN or \\+inf",
    ),
    ("NaN teacher logits", nan_teacher_logits, "teacher logits contain NaN"),
    (
        "empty batch",
        lambda h, w, t: distill_loss(h[:0], w, select(t, slice(0, 0)), "jsd"),
        "empty batch",
    ),
    (
        "empty dense batch",
        lambda h, w, t: divergence(h[:0] @ w.t(), h[:0] @ w.t(), "jsd"),
        "empty batch",
    ),
    ("empty teacher logits", lambda h, w, t: targets_from_logits(torch.zeros(0, 5)), "N > 0"),
    ("unknown kind", lambda h, w, t: distill_loss(h, w, t, "kl"), "loss kind 'kl' is unknown"),
    ("beta out of range", lambda h, w, t: distill_loss(h, w, t, "jsd", beta=1.5), "beta"),
    (
        "ce without labels",
        lambda h, w, t: distill_loss(h, w, t, "jsd", ce_weight=0.5),
        "needs labels",
    ),
    ("label past the vocabulary", label_past_vocabulary, "labels: token id out"),
    ("repeated target id", repeated_ids, "same token id twice"),
    (
        "hidden/targets mismatch",
        lambda h, w, t: distill_loss(h[:-1], w, t, "jsd"),
        "hidden states but",
    ),
]


@pytest.mark.parametrize(
    ("call", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_raises_user_error_naming_the_problem(call, message):
    hidden, weight, teacher, mask, _ = make_case(6, 50)
    targets = targets_from_logits(teacher, 8, mask=mask)
    with pytest.raises(UserError, match=message):
        call(hidden, weight, targets)


def test_nan_in_a_masked_out_position_is_ignored():
    hidden, weight, teacher, mask, _ = make_case(6, 50)
    mask[0] = False
    targets = targets_from_logits(teacher, 8, mask=mask)
    targets.logprobs[0] = float("nan")
    assert torch.isfinite(distill_loss(hidden, weight, targets, "reverse_kl"))
