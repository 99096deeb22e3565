"""Properties of alignment and projection on random Unicode text, for every tokenizer pair.

Pairs are all ordered pairs of `align_tokenizers.TOKENIZERS` (identity pairs included), so a
tokenizer style added there is covered here too.
"""

import math
import unicodedata

import numpy as np
import pytest
from align_tokenizers import TOKENIZERS, round_trips, tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polydistill.align.project import project
from polydistill.align.render import render_aligned
from polydistill.align.vocabmap import vocab_map
from polydistill.errors import UserError

PAIRS = [(t, s) for t in TOKENIZERS for s in TOKENIZERS]
K = 6

# Random code points, plus the characters tokenizers disagree on most. Lone surrogates (which no
# UTF-8 text holds) are left to `test_text_that_is_not_utf8_is_a_user_error`.
FRAGMENTS = [*"0123456789 \n\té日本語🚀▁\u0301", "123", "4567", "  ", "👍🏽", " the", "ab"]
code_points = st.characters(exclude_categories=["Cs"])
texts = st.lists(st.one_of(code_points, st.sampled_from(FRAGMENTS)), max_size=30).map("".join)


def _covers_exactly(seq) -> None:
    chunks = seq.chunks
    assert chunks.byte[0] == 0 and chunks.byte[-1] == len(seq.text)
    assert (np.diff(chunks.byte) > 0).all()
    for side, lengths, bounds in (
        ("teacher", seq.teacher_lengths, chunks.teacher),
        ("student", seq.student_lengths, chunks.student),
    ):
        assert bounds[0] == 0 and bounds[-1] == len(lengths), side
        assert (np.diff(bounds) >= 1).all(), side
        ends = np.concatenate([[0], np.cumsum(lengths)])
        assert ends[-1] == len(seq.text), side
        assert (ends[bounds] == chunks.byte).all(), side  # same bytes on both sides


def _teacher_rows(seq, n_vocab: int, rng: np.random.Generator):
    top = np.zeros((len(seq.teacher_ids), K), dtype=np.int64)
    for row in range(len(top)):
        top[row] = rng.choice(n_vocab, size=K, replace=False)
        if row + 1 < len(top) and rng.random() < 0.8 and seq.teacher_ids[row + 1] not in top[row]:
            top[row, 0] = seq.teacher_ids[row + 1]
    probs = rng.dirichlet(np.ones(K), size=len(top)) * rng.uniform(0.5, 1.0, (len(top), 1))
    return top, np.log(probs)


@pytest.mark.parametrize(("teacher_name", "student_name"), PAIRS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, seed=st.integers(0, 2**32 - 1))
def test_alignment_and_projection(teacher_name, student_name, text, seed):
    teacher, student = tokenizer(teacher_name), tokenizer(student_name)
    if not (round_trips(teacher, text) and round_trips(student, text)):
        with pytest.raises(UserError, match="round-trip"):
            render_aligned(teacher, student, "Q", text, teacher_name)
        return
    seq = render_aligned(teacher, student, "Q", text, teacher_name)
    _covers_exactly(seq)

    vmap = vocab_map(teacher, student, teacher_name)
    top, logprobs = _teacher_rows(seq, len(vmap.teacher), np.random.default_rng(seed))
    targets = project(seq, top, logprobs, vmap)
    rows = np.arange(seq.student_start - 1, seq.student_start + len(seq.student_lengths))
    in_loss = targets.mask.nonzero().flatten().tolist()
    assert set(in_loss) <= set(rows.tolist())  # template markup never is
    # the end-of-turn row and every row at a shared token boundary always are
    boundaries = seq.student_start - 1 + seq.chunks.student[:-1]
    assert {rows[-1], *boundaries.tolist()} <= set(in_loss)
    probs = targets.logprobs[targets.mask].double().exp()
    total = probs.sum(-1) + targets.tail[targets.mask].double()
    assert ((probs >= 0) & (targets.tail[targets.mask] >= 0)[:, None]).all()
    assert total.sub(1).abs().max() < 1e-5
    assert int(targets.ids.max()) < len(student)

    if teacher_name == student_name:  # the same tokenizer: projection is the identity
        assert in_loss == rows.tolist()
        for row in rows.tolist():
            want = {int(i): float(lp) for i, lp in zip(top[row], logprobs[row], strict=True)}
            got = {
                int(i): float(lp)
                for i, lp in zip(targets.ids[row], targets.logprobs[row], strict=True)
                if lp > -math.inf
            }
            assert got.keys() == want.keys()
            assert all(abs(got[i] - want[i]) < 1e-5 for i in want)
            own_tail = max(0.0, 1.0 - sum(math.exp(v) for v in want.values()))
            assert float(targets.tail[row]) == pytest.approx(own_tail, abs=1e-5)


def test_nfc_text_round_trips_through_qwen():
    text = unicodedata.normalize("NFC", "cafe\u0301 Ångström")
    assert round_trips(tokenizer("qwen3"), text)


def test_text_that_is_not_utf8_is_a_user_error():
    teacher, student = tokenizer("world-qwen"), tokenizer("world-gemma")
    with pytest.raises(UserError, match=r"^answer is not valid Unicode text"):
        render_aligned(teacher, student, "Q", "a\ud800b", "world-qwen")
