"""Unused target slots (log-prob -inf, as the cross-tokenizer projection pads short rows) belong
to the tail bucket in every loss kind, in the dense reference and the chunked path alike."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_losses import assert_grads_close, grads_of, independent_divergence, make_case

from polydistill.losses import KINDS, distill_loss, reference_distill_loss
from polydistill.targets import SparseTargets, targets_from_logits


def with_unused_slots(
    targets: SparseTargets, kept: torch.Tensor, vocab: int, seed: int
) -> SparseTargets:
    """Row r keeps its first `kept[r]` entries; the others become ids it does not list, with
    log-prob -inf, and the tail takes all the mass outside the kept ones."""
    gen = torch.Generator().manual_seed(seed)
    rows, k = targets.ids.shape
    ids, logprobs = targets.ids.clone(), targets.logprobs.clone()
    for row in range(rows):
        n = int(kept[row])
        free = torch.ones(vocab, dtype=torch.bool)
        free[ids[row, :n]] = False
        spare = free.nonzero().squeeze(1)
        ids[row, n:] = spare[torch.randperm(len(spare), generator=gen)[: k - n]]
        logprobs[row, n:] = float("-inf")
    tail = (1.0 - logprobs.double().exp().sum(-1)).clamp_min(0.0).to(logprobs.dtype)
    return SparseTargets(ids, logprobs, tail, targets.mask)


def slot_case(seed: int, temperature: float, dtype=torch.float32, rows=13, vocab=97, k=9):
    hidden, weight, teacher, mask, labels = make_case(rows, vocab, seed=seed, dtype=dtype)
    targets = targets_from_logits(teacher, k, temperature, mask=mask)
    kept = torch.arange(rows) % (k + 1)  # every count from no listed id to all k
    return hidden, weight, with_unused_slots(targets, kept, vocab, seed), labels


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 1.8])
def test_unused_slots_match_the_float64_reference(kind, temperature):
    hidden, weight, targets, labels = slot_case(3, temperature)
    assert bool((targets.logprobs == float("-inf")).any())
    args = dict(beta=0.3, alpha=0.2, temperature=temperature, ce_weight=0.2, labels=labels)
    hidden.requires_grad_()
    weight.requires_grad_()
    chunked = distill_loss(hidden, weight, targets, kind, memory_budget_mb=0.01, **args)
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    dense64 = reference_distill_loss(h64 @ w64.t(), targets, kind, **args)
    got_grads = grads_of(chunked, hidden, weight)
    assert all(bool(torch.isfinite(grad).all()) for grad in got_grads)
    assert abs(chunked.item() - dense64.item()) <= 1e-6 * abs(dense64.item())
    assert_grads_close(got_grads, grads_of(dense64, h64, w64), 1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 1.8])
def test_unused_slots_are_tail_tokens_not_buckets(kind, temperature):
    """Spelled out per row: the listed finite ids are buckets, everything else is one tail."""
    _, _, targets, _ = slot_case(5, temperature, torch.float64)
    student = torch.randn(len(targets), 97, dtype=torch.float64)
    got = reference_distill_loss(student, targets, kind, beta=0.3, temperature=temperature)
    q = torch.softmax(student / temperature, -1)
    per_row = []
    for row in range(len(targets)):
        finite = torch.isfinite(targets.logprobs[row])
        q_top = q[row, targets.ids[row][finite]]
        q_buckets = torch.cat([q_top, 1 - q_top.sum(0, keepdim=True)])
        p_buckets = torch.cat([targets.logprobs[row][finite].exp(), targets.tail[row, None]])
        per_row.append(independent_divergence(q_buckets.log(), p_buckets.log(), kind, 0.3, 0.1))
    want = torch.stack(per_row)[targets.mask].mean()
    assert math.isclose(got.item(), want.item(), rel_tol=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    temperature=st.floats(0.5, 3.0),
    k=st.integers(1, 12),
    budget_kb=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_unused_slots_chunked_equals_reference_in_float64(kind, temperature, k, budget_kb, seed):
    rows, vocab = 11, 40
    hidden, weight, teacher, mask, _ = make_case(rows, vocab, seed=seed, dtype=torch.float64)
    targets = targets_from_logits(teacher, k, temperature, mask=mask)
    kept = torch.randint(0, k + 1, (rows,), generator=torch.Generator().manual_seed(seed))
    targets = with_unused_slots(targets, kept, vocab, seed)
    args = dict(beta=0.6, alpha=0.2, temperature=temperature)
    hidden.requires_grad_()
    weight.requires_grad_()
    budget = budget_kb / 1024
    chunked = distill_loss(hidden, weight, targets, kind, memory_budget_mb=budget, **args)
    dense = reference_distill_loss(hidden @ weight.t(), targets, kind, **args)
    assert math.isclose(chunked.item(), dense.item(), rel_tol=1e-10, abs_tol=1e-12)
    expected = grads_of(dense, hidden, weight)
    for got, want in zip(grads_of(chunked, hidden, weight), expected, strict=True):
        assert bool(torch.isfinite(want).all())
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
