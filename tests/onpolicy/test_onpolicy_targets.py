"""The teachers' grading of the student's samples (`polydistill.onpolicy.targets`).

The sparse path (top-k readings + the observed token, projected, fused, k + 1 slots and a tail)
is checked against dense float64 references built from the teachers' full distributions.
"""

import copy
import functools

import numpy as np
import pytest
import torch
from align_tokenizers import tokenizer
from onpolicy_models import prompts, teacher, tiny_model

from polydistill.align import project, render, vocabmap
from polydistill.errors import UserError
from polydistill.losses import distill_loss
from polydistill.losses.reference import reference_distill_loss
from polydistill.onpolicy.sampling import sample_answers
from polydistill.onpolicy.targets import Grading, graded_rows, keep_sampled, with_observed
from polydistill.targets import SparseTargets
from polydistill.teachers.local import LocalTeacher
from polydistill.teachers.protocol import TeacherRows

K = 4


class Spy:
    """A teacher that records the top-k it is asked for (the sparse path must ask for K)."""

    def __init__(self, inner) -> None:
        self.inner, self.asked = inner, []
        self.name, self.tokenizer = inner.name, inner.tokenizer

    def fingerprint(self):
        return self.inner.fingerprint()

    def complete(self, *args, **kwargs):
        return self.inner.complete(*args, **kwargs)

    def score(self, prompts, completions, *, top_k, temperature, on_batch=None):
        self.asked.append((top_k, temperature))
        return self.inner.score(prompts, completions, top_k=top_k, temperature=temperature)


def _drawn(student, tok, asked, samples=2, max_new_tokens=10):
    return sample_answers(
        student, tok, asked, prompt_ids=list(range(len(asked))), samples=samples,
        temperature=1.0, max_new_tokens=max_new_tokens, seed=7, refresh=0, batch_size=8,
    )  # fmt: skip


@torch.no_grad()
def _dense_logprobs(model, ids: list[int], start: int) -> torch.Tensor:
    """float64 log-probs `[answer tokens, V]` of the rows predicting ids[start:]."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits[start - 1 : len(ids) - 1], dim=-1)


def _restricted(kind: str, lq: torch.Tensor, lp: torch.Tensor, listed: torch.Tensor) -> float:
    """The divergence over the buckets {each listed id} + {everything else}, from the full
    float64 distributions (JSD with beta 0.5)."""
    q, p = lq[listed].exp(), lp[listed].exp()
    q = torch.cat([q, (1.0 - q.sum())[None]])
    p = torch.cat([p, (1.0 - p.sum())[None]])
    if kind == "reverse_kl":
        return float((q * (q.log() - p.log())).sum())
    if kind == "forward_kl":
        return float((p * (p.log() - q.log())).sum())
    m = (p + q) / 2
    return float(0.5 * (p * (p.log() - m.log())).sum() + 0.5 * (q * (q.log() - m.log())).sum())


def _rows_of(targets: SparseTargets, rows: slice) -> SparseTargets:
    return SparseTargets(
        targets.ids[rows], targets.logprobs[rows], targets.tail[rows], targets.mask[rows]
    )


def _answer_states(student, drawn) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's last hidden states and logits at the positions predicting each sample's
    answer tokens, all samples' rows concatenated (the rows the graded targets line up with)."""
    hidden, logits = [], []
    with torch.no_grad():
        for sample in drawn.rows:
            ids = torch.tensor([sample.prompt_ids + sample.answer_ids])
            out = student(input_ids=ids, output_hidden_states=True)
            span = slice(len(sample.prompt_ids) - 1, ids.shape[1] - 1)
            hidden.append(out.hidden_states[-1][0, span])
            logits.append(out.logits[0, span])
    return torch.cat(hidden), torch.cat(logits)


@functools.cache
def _graded_by_one_teacher(style: str):
    tok = tokenizer("world-student")
    student = tiny_model("student", 0).double()
    graders = teacher("t", style, 5, sharpness=3.0)
    graders.model.double()
    spy = Spy(graders)
    asked = prompts(4)
    drawn = _drawn(student, tok, asked)
    data, stats = graded_rows(drawn, [spy], tok, asked, Grading("uniform"), top_k=K)
    return tok, student, graders, spy, drawn, data, stats


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "jsd"])
def test_sparse_divergence_matches_the_dense_reference(kind):
    """A teacher sharing the student's tokenizer, so its full distribution is the dense target:
    per position, the library's divergence against the sparse row (k + 1 ids + tail) equals the
    divergence of the full distributions restricted to the same buckets, within 1e-6; the
    sampled token is listed with the teacher's exact probability."""
    tok, student, same, spy, drawn, data, stats = _graded_by_one_teacher("student")
    # The sparse path asked for top-K at temperature 1 and nothing denser.
    assert spy.asked == [(K, 1.0)] and len(tok) > K
    assert data.targets.k == K + 1
    assert stats["sampled_outside_top_k"]["t"] > 5  # the observed-token slot is exercised
    worst, restriction_matters = 0.0, 0.0
    for r, sample in enumerate(drawn.rows):
        ids, start = sample.prompt_ids + sample.answer_ids, len(sample.prompt_ids)
        lp = _dense_logprobs(same.model, ids, start)
        lq = _dense_logprobs(student, ids, start)  # log-probs are logits of the same softmax
        targets = _rows_of(data.targets, slice(data.offsets[r], data.offsets[r + 1]))
        assert bool(targets.mask.all())
        for j, sampled in enumerate(sample.answer_ids):
            one = _rows_of(targets, slice(j, j + 1))
            sparse = float(reference_distill_loss(lq[j : j + 1], one, kind, reduction="sum"))
            listed = one.ids[0][torch.isfinite(one.logprobs[0])]
            dense = _restricted(kind, lq[j], lp[j], listed)
            worst = max(worst, abs(sparse - dense))
            everything = torch.arange(len(tok))[:-1]  # all but one id: (nearly) unrestricted
            full = _restricted(kind, lq[j], lp[j], everything)
            restriction_matters = max(restriction_matters, abs(full - dense))
            assert int(one.ids[0, 0]) == sampled
            exact = float(lp[j, sampled].exp())
            assert abs(float(one.logprobs[0, 0].double().exp()) - exact) < 1e-6
    assert worst < 1e-6, worst
    # Had the sparse path used the dense rows, the unrestricted KL would match; it does not.
    assert restriction_matters > 1e-3
    assert float(data.targets.tail.double().mean()) > 0.05


def test_the_training_loss_on_graded_rows_is_the_reference_loss():
    """The chunked, lm_head-fused loss on the k + 1 rows equals the dense reference's."""
    _, student, _, _, drawn, data, _ = _graded_by_one_teacher("qwen")
    hidden, logits = _answer_states(student, drawn)
    head = student.get_output_embeddings().weight
    chunked = distill_loss(hidden, head, data.targets, "reverse_kl", reduction="sum")
    dense = reference_distill_loss(logits, data.targets, "reverse_kl", reduction="sum")
    chunked, dense = float(chunked.detach()), float(dense)
    assert abs(chunked - dense) < 1e-9 * max(1.0, abs(dense))
    assert dense > 0.1


def test_cross_tokenizer_grading_keeps_the_sampled_path_that_top_k_loses():
    """Another tokenizer: where the student token is one teacher token, the sampled token's
    target probability is at least the teacher's exact probability of that token (read from a
    full-vocabulary reading); the projection of the bare top-k gives it nothing where the top-k
    missed it, so the observed log-prob is what carries it."""
    tok, _, qwen, _, drawn, data, stats = _graded_by_one_teacher("qwen")
    assert stats["sampled_outside_top_k"]["t"] > 5
    vmap = vocabmap.vocab_map(qwen.tokenizer, tok, "t")
    compared = rescued = 0
    for r, sample in enumerate(drawn.rows):
        prompt = prompts(4)[sample.prompt]
        full = qwen.score([prompt], [sample.text], top_k=len(qwen.tokenizer), temperature=1.0)[0]
        sparse = qwen.score([prompt], [sample.text], top_k=K, temperature=1.0)[0]
        seq = render.render_aligned(qwen.tokenizer, tok, prompt, sample.text, "t")
        bare = project.project(seq, *sparse.full_rows(), vmap)
        one_to_one = _one_to_one(seq)
        rows = data.targets.logprobs[data.offsets[r] : data.offsets[r + 1]].double()
        for j, t in one_to_one.items():  # student answer token j is teacher answer token t
            observed = int(seq.teacher_ids[seq.teacher_start + t])
            exact = float(np.exp(full.top_logprobs[t][full.top_ids[t] == observed][0]))
            assert float(rows[j, 0].exp()) >= exact - 1e-6
            compared += 1
            if observed not in sparse.top_ids[t]:
                student_id = sample.answer_ids[j]
                bare_row = bare.ids[seq.student_start - 1 + j]
                listed = bare.logprobs[seq.student_start - 1 + j][bare_row == student_id]
                assert listed.numel() == 0 or float(listed.exp().sum()) < exact - 1e-6
                rescued += 1
    assert compared > 10 and rescued > 3


def _one_to_one(seq) -> dict[int, int]:
    """Student answer token -> teacher answer token covering exactly the same bytes."""

    def spans(lengths):
        ends = np.cumsum(lengths)
        return {
            (int(e - n), int(e)): i for i, (e, n) in enumerate(zip(ends, lengths, strict=True)) if n
        }

    teacher = spans(seq.teacher_lengths)
    return {j: teacher[s] for s, j in spans(seq.student_lengths).items() if s in teacher}


def test_with_observed_adds_the_missing_observed_token_with_its_log_prob():
    ids = np.array([5, 6, 7, 8, 2])  # prompt 5 6, answer 7 8, end 2
    top_ids = np.array([[7, 1], [3, 4], [2, 0]])  # rows predicting 7, 8, 2: the 2nd misses 8
    top = np.log(np.array([[0.6, 0.3], [0.5, 0.2], [0.9, 0.05]]))
    rows = TeacherRows(ids, 2, top_ids, top.astype(np.float32), np.log([0.5, 0.6, 0.1, 0.9]))
    out_ids, out_lp = with_observed(rows)
    assert out_ids.shape == (5, 3)
    assert out_ids[2, 2] == 8 and np.isclose(np.exp(out_lp[2, 2]), 0.1)
    for row in (1, 3):  # observed listed: a fresh id at probability zero
        assert out_lp[row, 2] == -np.inf and out_ids[row, 2] not in out_ids[row, :2]
        assert out_ids[row, 2] != ids[row + 1]
    assert (out_lp[[0, 4], 2] == -np.inf).all()  # rows outside the answer hold nothing


def test_keep_sampled_holds_a_slot_for_the_sampled_token():
    ids = torch.tensor([[3, 4, 5, 6], [3, 4, 5, 6]])
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.05], [0.4, 0.3, 0.2, 0.05]], dtype=torch.float64)
    wide = SparseTargets(
        ids, probs.log().float(), torch.tensor([0.05, 0.05]), torch.ones(2, dtype=torch.bool)
    )
    out = keep_sampled(wide, torch.tensor([6, 9]), top_k=2, vocab_size=12)
    assert out.ids[0].tolist()[:3] == [6, 3, 4]
    assert torch.allclose(
        out.logprobs[0].double().exp(), torch.tensor([0.05, 0.4, 0.3], dtype=torch.float64)
    )
    assert abs(float(out.tail[0]) - 0.25) < 1e-6  # 0.05 + the dropped 0.2
    # a sampled id no teacher placed: -inf, its slot given a distinct unlisted id
    assert out.logprobs[1, 0] == -torch.inf and abs(float(out.tail[1]) - 0.3) < 1e-6
    assert len(set(out.ids[1].tolist())) == 3 and int(out.ids[1].max()) < 12


def test_strategies_that_need_what_a_sample_lacks_are_refused():
    tok = tokenizer("world-student")
    asked = prompts(2)
    drawn = _drawn(tiny_model("student", 0), tok, asked, samples=1, max_new_tokens=3)
    graders = [teacher("a", "qwen", 1)]
    with pytest.raises(UserError, match="'mince' cannot grade the student's samples"):
        graded_rows(drawn, graders, tok, asked, Grading("mince"), top_k=K)
    with pytest.raises(UserError, match="'route' needs each prompt's domain"):
        graded_rows(drawn, graders, tok, asked, Grading("route"), top_k=K)


def test_evidence_weighs_teachers_by_bits_per_byte_on_prompt_and_sample():
    tok = tokenizer("world-student")
    asked = prompts(2)
    drawn = _drawn(tiny_model("student", 0), tok, asked, samples=1, max_new_tokens=4)
    a, b = teacher("a", "qwen", 1), teacher("b", "gemma", 2, sharpness=1.0)
    data, _ = graded_rows(drawn, [a, b], tok, asked, Grading("evidence", 0.5), top_k=K)
    uniform, _ = graded_rows(drawn, [a, b], tok, asked, Grading("uniform"), top_k=K)
    bits = []
    for t in (a, b):
        rows = t.score(asked, [r.text for r in drawn.rows], top_k=K, temperature=1.0)
        sizes = [len(asked[r.prompt].encode()) + len(r.text.encode()) + 1 for r in drawn.rows]
        bits.append([x.bits() / n for x, n in zip(rows, sizes, strict=True)])
    weights = torch.softmax(-torch.tensor(bits, dtype=torch.float64) / 0.5, dim=0)
    assert float((weights[0] - 0.5).abs().max()) > 0.01  # the strategies really differ here
    assert not torch.equal(data.targets.logprobs, uniform.targets.logprobs)
    fixed, _ = graded_rows(
        drawn,
        [a, b],
        tok,
        asked,
        Grading("fixed", fixed={"a": float(weights[0, 0]), "b": float(weights[1, 0])}),
        top_k=K,
    )
    first = slice(0, data.offsets[1])
    assert torch.allclose(data.targets.logprobs[first], fixed.targets.logprobs[first], atol=1e-6)


def test_a_student_graded_by_itself_has_nothing_to_learn():
    """A teacher that is the student (same weights, same tokenizer) grades every sampled
    position with the student's own distribution: the on-policy loss is zero, for both
    directions of the KL. An off-by-one between the graded rows and the positions that predict
    each sampled token, or a slot given to the wrong token, would make it large (a differently
    seeded model of the same tokenizer, as the guard shows)."""
    tok = tokenizer("world-student")
    student = tiny_model("student", 0, sharpness=3.0).double()
    asked = prompts(6)
    drawn = _drawn(student, tok, asked)
    hidden, _ = _answer_states(student, drawn)
    head = student.get_output_embeddings().weight

    def loss(grader, kind: str) -> float:
        data, _ = graded_rows(drawn, [grader], tok, asked, Grading("uniform"), top_k=K)
        with torch.no_grad():
            return float(distill_loss(hidden, head, data.targets, kind, reduction="sum"))

    mirror = LocalTeacher("self", copy.deepcopy(student), tok, 16)
    other = LocalTeacher("other", tiny_model("student", 1, sharpness=3.0).double(), tok, 16)
    for kind in ("reverse_kl", "forward_kl"):
        assert abs(loss(mirror, kind)) < 1e-6
        assert loss(other, kind) > 0.1
