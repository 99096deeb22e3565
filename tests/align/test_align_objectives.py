"""Chunk-likelihood (ALM-style) and ULD objectives against float64 references."""

import numpy as np
import pytest
import torch
from align_tokenizers import toy_byte_level

from polydistill.align.render import render_aligned
from polydistill.losses.cross_tokenizer import (
    chunk_likelihood_loss,
    chunk_loglik,
    merge_chunk_probs,
    token_logprobs,
    uld_loss,
)
from polydistill.world.tokenizers import O200K_PATTERN


def _logsoftmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference_chunk_ll(logits: np.ndarray, ids: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    lp = _logsoftmax(logits.astype(np.float64))
    return np.array(
        [
            sum(lp[u - 1, ids[u]] for u in range(bounds[c], bounds[c + 1]))
            for c in range(len(bounds) - 1)
        ]
    )


def _aligned_pair():
    teacher = toy_byte_level(["12", "123", "ab"], pattern=O200K_PATTERN)
    student = toy_byte_level(["ab", "abc"])
    seq = render_aligned(teacher, student, "q", "abc 123 ab1", "toy")
    return seq, len(teacher), len(student)


def test_chunk_loglik_is_the_chain_rule_per_chunk():
    seq, _, n_student = _aligned_pair()
    _, bounds = seq.token_bounds()
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(seq.student_ids), n_student))
    ids = torch.from_numpy(seq.student_ids)
    got = chunk_loglik(token_logprobs(torch.from_numpy(logits), ids), torch.from_numpy(bounds))
    want = _reference_chunk_ll(logits, seq.student_ids, bounds)
    assert np.allclose(got.double().numpy(), want, atol=1e-5)
    assert len(bounds) - 1 == len(seq.chunks) + 1  # the end-of-turn pair is one more chunk


def _bernoulli_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunk_likelihood_loss_is_bernoulli_kl(temperature):
    rng = np.random.default_rng(1)
    teacher_ll = -rng.exponential(2.0, size=50)
    student_ll = torch.tensor(-rng.exponential(2.0, size=50), requires_grad=True)
    loss = chunk_likelihood_loss(student_ll, torch.from_numpy(teacher_ll), temperature)
    p, q = np.exp(teacher_ll / temperature), np.exp(student_ll.detach().numpy() / temperature)
    assert loss.item() == pytest.approx(_bernoulli_kl(p, q).mean(), rel=1e-9)
    loss.backward()
    assert torch.isfinite(student_ll.grad).all()
    same = chunk_likelihood_loss(torch.from_numpy(teacher_ll), torch.from_numpy(teacher_ll))
    assert same.item() == pytest.approx(0.0, abs=1e-12)


def test_merge_and_uld_match_reference():
    seq, n_teacher, n_student = _aligned_pair()
    teacher_bounds, student_bounds = seq.token_bounds()
    rng = np.random.default_rng(2)
    t_logits = rng.normal(size=(len(seq.teacher_ids), n_teacher)) * 2
    s_logits = rng.normal(size=(len(seq.student_ids), n_student)) * 2

    def merged(logits, ids, bounds):
        lp = _logsoftmax(logits)
        rows = []
        for c in range(len(bounds) - 1):
            first = bounds[c]
            later = sum(lp[u - 1, ids[u]] for u in range(first + 1, bounds[c + 1]))
            rows.append(np.exp(lp[first - 1] + later))
        return np.array(rows)

    t_ref = merged(t_logits, seq.teacher_ids, teacher_bounds)
    s_ref = merged(s_logits, seq.student_ids, student_bounds)
    got = merge_chunk_probs(
        torch.from_numpy(t_logits),
        torch.from_numpy(seq.teacher_ids),
        torch.from_numpy(teacher_bounds),
    )
    assert np.allclose(got.double().numpy(), t_ref, atol=1e-6)
    width = max(n_teacher, n_student)
    pad = lambda a: np.pad(-np.sort(-a, axis=-1), ((0, 0), (0, width - a.shape[1])))  # noqa: E731
    want = np.abs(pad(s_ref) - pad(t_ref)).sum(-1).mean()
    loss = uld_loss(
        torch.from_numpy(s_logits),
        torch.from_numpy(seq.student_ids),
        torch.from_numpy(student_bounds),
        torch.from_numpy(t_logits),
        torch.from_numpy(seq.teacher_ids),
        torch.from_numpy(teacher_bounds),
    )
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_uld_ignores_which_token_is_which():
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(size=(5, 40)))
    ids = torch.from_numpy(rng.integers(0, 40, size=5))
    bounds = torch.tensor([1, 2, 4, 5])
    permuted = logits[:, torch.randperm(40)]
    loss = uld_loss(logits, ids, bounds, permuted, ids, torch.tensor([1, 2, 3, 5]))
    assert loss.item() > 0.0  # different chunking: different merged mass
    same = uld_loss(logits, ids, bounds[:2], permuted, ids, bounds[:2])
    assert same.item() == pytest.approx(0.0, abs=1e-6)
