"""From readings to the student's rows (`polydistill.student.targets`), with scripted teachers.

A `ScriptedTeacher` implements the `Teacher` protocol over a tokenizer of the tiny world: its
answers are given, and its reading of an answer lists seeded random tokens of its vocabulary and
spends a chosen number of bits per byte on the answer, so every number the module computes has
a value known in advance.
"""

import math
import zlib
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from polydistill import fusion
from polydistill.chat import render_answer
from polydistill.errors import UserError
from polydistill.student.targets import (
    answer_bytes,
    choose_answers,
    own_answer_bits_per_byte,
    project_answers,
    student_targets,
)
from polydistill.teachers.protocol import TeacherRows, tokenizer_fingerprint
from polydistill.teachers.readings import (
    Candidate,
    Readings,
    distinct_candidates,
    gather_readings,
)

LN2 = math.log(2.0)
PROMPT_NATS = 0.125  # what a scripted teacher spends on every prompt and markup token


class ScriptedTeacher:
    """A `Teacher` with given answers (`answers[sample][prompt]`) and made-up readings: each
    answer position lists `top_k` seeded random ids holding 50-100% of the mass, and the
    observed tokens cost `PROMPT_NATS` each on the prompt side and `answer_bpb[text]` bits per
    byte (default 1) spread evenly over the answer's tokens."""

    def __init__(self, name, tokenizer, answers: list[list[str]], answer_bpb=None) -> None:
        self.name, self.tokenizer, self.answers = name, tokenizer, answers
        self.answer_bpb = answer_bpb or {}

    def fingerprint(self) -> dict[str, str]:
        return {"source": "scripted", **tokenizer_fingerprint(self.tokenizer)}

    def complete(self, prompts, *, samples, max_new_tokens, seed, on_batch=None):
        return [list(self.answers[s]) for s in range(samples)]

    def score(self, prompts, completions, *, top_k, temperature, on_batch=None):
        return [self.reading(p, c, top_k) for p, c in zip(prompts, completions, strict=True)]

    def reading(self, prompt: str, completion: str, k: int) -> TeacherRows:
        ids, start = render_answer(self.tokenizer, prompt, completion, self.name)
        rng = np.random.default_rng(zlib.crc32(f"{self.name}|{prompt}|{completion}".encode()))
        answer = len(ids) - start
        top_ids = np.stack([rng.permutation(len(self.tokenizer))[:k] for _ in range(answer)])
        raw = rng.gamma(0.5, size=(answer, k)) + 1e-3
        listed = rng.uniform(0.5, 1.0, size=(answer, 1))
        logprobs = -np.sort(-np.log(raw / raw.sum(1, keepdims=True) * listed), axis=1)
        bits = self.answer_bpb.get(completion, 1.0) * answer_bytes(completion)
        spent = np.r_[np.full(start - 1, PROMPT_NATS), np.full(answer, bits * LN2 / answer)]
        return TeacherRows(
            ids=np.asarray(ids, dtype=np.int64),
            start=start,
            top_ids=top_ids.astype(np.int64),
            top_logprobs=logprobs.astype(np.float32),
            token_logprobs=(-spent).astype(np.float32),
        )


@pytest.fixture(scope="module")
def student_tokenizer(tiny_world):
    return AutoTokenizer.from_pretrained(tiny_world.tokenizer_dir("student"))


@pytest.fixture(scope="module")
def qwen_tokenizer(tiny_world):
    return AutoTokenizer.from_pretrained(tiny_world.tokenizer_dir("qwen"))


@pytest.fixture(scope="module")
def prompts(tiny_world) -> list[str]:
    return [tiny_world.train["facts"][0].prompt, "12+7", "reverse: abc", "What is 3+4?"]


def read(teachers: Sequence[ScriptedTeacher], prompts: Sequence[str], samples=1, k=6):
    return gather_readings(
        teachers, prompts, samples=samples, max_new_tokens=8, seed=0, top_k=k, temperature=1.0
    )


def test_answers_merge_into_distinct_candidates_with_their_authors():
    answers = {"a": [["x", "y"], ["z", "y"]], "b": [["x", "w"]]}
    found = distinct_candidates(answers, prompts=2)
    assert found == [
        Candidate(0, "x", (("a", 0), ("b", 0))),
        Candidate(0, "z", (("a", 1),)),
        Candidate(1, "y", (("a", 0), ("a", 1))),
        Candidate(1, "w", (("b", 0),)),
    ]


def test_every_teacher_reads_every_candidate(student_tokenizer, qwen_tokenizer, prompts):
    a = ScriptedTeacher("a", student_tokenizer, [["7", "x", "cba", "7"], ["8", "x", "cba", "7"]])
    b = ScriptedTeacher("b", qwen_tokenizer, [["7", "19", "cab", "7"], ["7", "19", "cab", "6"]])
    readings = read([a, b], prompts, samples=2)
    texts = [[readings.candidates[c].text for c in of] for of in readings.candidates_of]
    assert texts == [["7", "8"], ["x", "19"], ["cba", "cab"], ["7", "6"]]
    assert readings.candidates[0].authors == (("a", 0), ("b", 0), ("b", 1))
    for name, teacher in (("a", a), ("b", b)):
        assert len(readings.rows[name]) == len(readings.candidates)
        for candidate, rows in zip(readings.candidates, readings.rows[name], strict=True):
            expected = teacher.reading(prompts[candidate.prompt], candidate.text, 6)
            assert np.array_equal(rows.ids, expected.ids) and rows.start == expected.start


def test_readings_refuse_repeated_names_and_no_prompts(student_tokenizer):
    a = ScriptedTeacher("a", student_tokenizer, [["1"]])
    with pytest.raises(UserError, match=r"teacher names must be distinct: \['a', 'a'\]"):
        read([a, a], ["1+0"])
    with pytest.raises(UserError, match="no prompts to distil from"):
        read([a], [])


def weighted_bits_per_byte(readings: Readings, weights: np.ndarray, c: int) -> float:
    """The ranking score of candidate c, straight from the definition."""
    candidate = readings.candidates[c]
    total = 0.0
    for t, rows in enumerate(readings.rows.values()):
        spent = -rows[c].token_logprobs[rows[c].start - 1 :].astype(np.float64).sum() / LN2
        total += weights[t, candidate.prompt] * spent / (len(candidate.text.encode()) + 1)
    return total


@settings(max_examples=25, deadline=None)
@given(
    bpb=st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0]), min_size=8, max_size=8),
    raw_weights=st.lists(st.floats(0.0, 1.0), min_size=8, max_size=8),
    per_prompt=st.integers(1, 3),
)
def test_answers_are_ranked_by_weighted_bits_per_byte(
    student_tokenizer, prompts, bpb, raw_weights, per_prompt
):
    texts = [["7", "x", "cba", "7"], ["8", "19", "cab", "6"]]
    scripts = [dict(zip(["7", "8", "x", "19"], bpb[i : i + 4], strict=True)) for i in (0, 4)]
    teachers = [
        ScriptedTeacher(name, student_tokenizer, [answers], script)
        for name, answers, script in zip("ab", texts, scripts, strict=True)
    ]
    readings = read(teachers, prompts)
    weights = np.asarray(raw_weights).reshape(2, 4) + 1e-3
    weights /= weights.sum(0)
    chosen = choose_answers(readings, torch.from_numpy(weights), per_prompt)
    expected = []
    for i, candidates in enumerate(readings.candidates_of):
        scores = {c: round(weighted_bits_per_byte(readings, weights, c), 9) for c in candidates}
        ranked = sorted(candidates, key=lambda c: (scores[c], c))
        expected += [(i, c) for c in ranked[:per_prompt]]
    assert chosen == expected
    for rows, teacher in zip(readings.rows.values(), teachers, strict=True):
        for candidate, r in zip(readings.candidates, rows, strict=True):  # the script holds
            spent = r.bits(completion_only=True) / answer_bytes(candidate.text)
            assert spent == pytest.approx(teacher.answer_bpb.get(candidate.text, 1.0), rel=1e-5)


def handmade_readings(costs: list[float]) -> Readings:
    """One prompt, one teacher, a candidate per cost (nats on each of two answer tokens)."""
    candidates = [Candidate(0, text, (("t", 0),)) for text in ("ab", "cd", "ef")[: len(costs)]]
    rows = [
        TeacherRows(
            ids=np.arange(5),
            start=3,
            top_ids=np.zeros((2, 1), dtype=np.int64),
            top_logprobs=np.zeros((2, 1), dtype=np.float32),
            token_logprobs=np.asarray([-1.0, -1.0, -cost, -cost], dtype=np.float32),
        )
        for cost in costs
    ]
    return Readings(candidates, [list(range(len(costs)))], {"t": rows})


def test_ties_go_to_the_earlier_candidate_and_per_prompt_keeps_the_best_in_order():
    one = torch.ones((1, 1), dtype=torch.float64)
    assert choose_answers(handmade_readings([0.5, 0.5, 0.25]), one, 1) == [(0, 2)]
    assert choose_answers(handmade_readings([0.5, 0.5, 0.25]), one, 2) == [(0, 2), (0, 0)]
    assert choose_answers(handmade_readings([0.75, 0.5, 0.5]), one, 1) == [(0, 1)]
    assert choose_answers(handmade_readings([0.75, 0.5]), one, 5) == [(0, 1), (0, 0)]


def test_own_answer_bits_per_byte_is_the_prompt_and_greedy_answer_of_each_teacher(
    student_tokenizer, qwen_tokenizer, prompts
):
    """Sampled answers and other teachers' answers do not count; a shared greedy answer counts
    for each of its authors, in each author's own reading."""
    a = ScriptedTeacher(
        "a",
        student_tokenizer,
        [["7", "x", "cba", "7"], ["9", "y", "abc", "8"]],
        {"7": 0.5, "x": 3.0, "cba": 1.5, "9": 0.01, "y": 0.01, "abc": 0.01},
    )
    b = ScriptedTeacher("b", qwen_tokenizer, [["7", "19", "cab", "6"], ["7", "19", "cab", "6"]],
                        {"7": 2.0, "19": 0.25, "cab": 1.0, "6": 4.0})  # fmt: skip
    readings = read([a, b], prompts, samples=2)
    got = own_answer_bits_per_byte(readings, prompts).numpy()
    assert got.shape == (2, 4)
    for t, teacher in enumerate((a, b)):
        for i, prompt in enumerate(prompts):
            answer = teacher.answers[0][i]
            _, start = render_answer(teacher.tokenizer, prompt, answer, "t")
            bits = PROMPT_NATS * (start - 1) / LN2 + teacher.answer_bpb[answer] * answer_bytes(
                answer
            )
            size = len(prompt.encode()) + answer_bytes(answer)
            assert got[t, i] == pytest.approx(bits / size, rel=1e-5)


def as_row(ids, logprobs) -> dict[int, float]:
    finite = np.isfinite(logprobs)
    probs = np.exp(logprobs[finite].astype(np.float64))
    return dict(zip(ids[finite].tolist(), probs.tolist(), strict=True))


@pytest.mark.parametrize("strategy", ["uniform", "product"])
def test_a_same_tokenizer_teacher_comes_through_unchanged(
    student_tokenizer, prompts, tiny_world, strategy
):
    """Projection into the teacher's own vocabulary and fusion of one teacher are the
    identity: the student's rows are the teacher's rendering and its listed rows and tails."""
    answers = ["7", "Quen brook", "cba", "17"]
    teacher = ScriptedTeacher("same", student_tokenizer, [answers])
    readings = read([teacher], prompts, k=7)
    domains = ["facts", "arithmetic", "strings", "arithmetic"]
    weights = fusion.uniform_weights(1, len(prompts))
    data, accounts = student_targets(
        readings, [teacher], student_tokenizer, prompts, domains, strategy=strategy,
        weights=weights, temperature=1.0, top_k=7, completions_per_prompt=1,
    )  # fmt: skip
    assert len(data) == 4 and data.offsets[0] == 0 and data.offsets[-1] == len(data.targets)
    tails = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        rows = teacher.reading(prompt, answer, 7)
        assert data.prompts[i] + data.completions[i] == rows.ids.tolist()
        assert len(data.prompts[i]) == rows.start
        span = slice(data.offsets[i], data.offsets[i + 1])
        assert bool(data.targets.mask[span].all())
        for j, target in enumerate(range(span.start, span.stop)):
            got = as_row(data.targets.ids[target].numpy(), data.targets.logprobs[target].numpy())
            want = as_row(rows.top_ids[j], rows.top_logprobs[j])
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[t] for t in want], list(want.values()), rtol=2e-6)
            tail = 1.0 - sum(want.values())
            assert float(data.targets.tail[target]) == pytest.approx(tail, rel=1e-5, abs=1e-6)
            tails.append(tail)
    assert accounts["tail"] == {"same": pytest.approx(float(np.mean(tails)), abs=2e-6)}
    assert accounts["strategy"] == strategy


@pytest.fixture(scope="module")
def three_teachers(student_tokenizer, qwen_tokenizer):
    """a and b speak the student's tokenizer, c qwen's; a and b share two greedy answers. Each
    finds its own answers likelier (0.5 bits per byte) than the others' (1)."""
    answers = {
        "a": ["7", "x", "cba", "7"],
        "b": ["7", "19", "cba", "6"],
        "c": ["8", "19", "cab", "7"],
    }
    tokenizers = {"a": student_tokenizer, "b": student_tokenizer, "c": qwen_tokenizer}
    return [
        ScriptedTeacher(n, tokenizers[n], [answers[n]], dict.fromkeys(answers[n], 0.5))
        for n in answers
    ]


DOMAINS = ["facts", "arithmetic", "strings", "arithmetic"]


def accounts_of(teachers, tokenizer, prompts, weights: torch.Tensor, strategy="fixed"):
    readings = read(teachers, prompts)
    return student_targets(
        readings, teachers, tokenizer, prompts, DOMAINS, strategy=strategy, weights=weights,
        temperature=1.0, top_k=6, completions_per_prompt=1,
    )  # fmt: skip


def test_contributions_under_routing_are_one_teacher_per_domain(
    three_teachers, student_tokenizer, prompts
):
    names = [t.name for t in three_teachers]
    routes = {"facts": "b", "arithmetic": "c", "strings": "a"}
    weights = fusion.route_weights(names, DOMAINS, routes)
    _, accounts = accounts_of(three_teachers, student_tokenizer, prompts, weights, "route")
    assert accounts["teachers"] == names
    for domain, teacher in routes.items():
        assert accounts["mass"][domain] == {n: float(n == teacher) for n in names}
    # prompt 0's answer "7" is a's and b's: the routed author b wrote it
    assert accounts["completions"] == {
        "facts": {"a": 0, "b": 1, "c": 0},
        "arithmetic": {"a": 0, "b": 0, "c": 2},
        "strings": {"a": 1, "b": 0, "c": 0},
    }
    examples = accounts["examples"]
    assert [e["prompt"] for e in examples] == [0, 1, 2, 3]
    assert [e["completion_by"] for e in examples] == ["b", "c", "a", "c"]
    assert examples[1]["weights"] == {"a": 0.0, "b": 0.0, "c": 1.0}


def test_contributions_mass_is_each_teachers_voting_weight_per_domain(
    three_teachers, student_tokenizer, prompts
):
    """Mass shares sum to 1 in every domain and equal the mean, over the domain's positions in
    the loss, of the weights renormalised over the teachers whose projection is live there."""
    names = [t.name for t in three_teachers]
    fixed = {"a": 0.5, "b": 0.3, "c": 0.2}
    weights = fusion.fixed_weights(names, fixed, len(prompts))
    data, accounts = accounts_of(three_teachers, student_tokenizer, prompts, weights)
    readings = read(three_teachers, prompts)
    chosen = choose_answers(readings, weights, 1)
    *_, per_teacher, offsets = project_answers(
        readings, three_teachers, student_tokenizer, prompts, chosen, 6
    )
    assert offsets == data.offsets
    live = torch.stack([t.mask for t in per_teacher]).double().numpy()
    assert live[:2].all()  # the same-tokenizer teachers speak at every answer position
    share = np.asarray([fixed[n] for n in names])[:, None] * live
    share /= share.sum(0)
    row_domain = np.repeat([DOMAINS[i] for i, _ in chosen], np.diff(offsets))
    for domain in sorted(set(DOMAINS)):
        mass = accounts["mass"][domain]
        assert sum(mass.values()) == pytest.approx(1.0, abs=3e-6)
        expected = share[:, row_domain == domain].mean(1)
        assert [mass[n] for n in names] == pytest.approx(expected.tolist(), abs=1e-6)
    counts = accounts["completions"]
    assert {d: sum(c.values()) for d, c in counts.items()} == {
        "facts": 1, "arithmetic": 2, "strings": 1,
    }  # fmt: skip
    # the authors with the highest weight: a (shared "7" and "cba"), and for prompt 1 and 3
    # whoever wrote the chosen answer
    by = [e["completion_by"] for e in accounts["examples"]]
    assert by[0] == "a" and by[2] == "a"
    for i, c in chosen:
        assert by[i] in [a for a, _ in readings.candidates[c].authors]
    assert 0.0 <= accounts["tail"]["c"] <= 1.0


def test_projections_kept_between_calls_give_the_same_rows_without_projecting_again(
    three_teachers, student_tokenizer, prompts, monkeypatch
):
    """The benchmark's models share one `projections` dict: the second strategy's rows equal
    those computed from scratch, and only answers the first did not choose are projected."""
    from polydistill.align import project

    calls = []
    real = project.project
    monkeypatch.setattr(project, "project", lambda *a, **k: calls.append(1) or real(*a, **k))
    names = [t.name for t in three_teachers]
    only_c = fusion.fixed_weights(names, {"c": 1.0}, len(prompts))
    uniform = fusion.uniform_weights(len(names), len(prompts))
    readings = read(three_teachers, prompts)

    def rows(weights, projections):
        return project_answers(
            readings, three_teachers, student_tokenizer, prompts,
            choose_answers(readings, weights, 1), 6, projections,
        )  # fmt: skip

    fresh = rows(uniform, None)
    projections: dict = {}
    rows(only_c, projections)
    calls.clear()
    kept = rows(uniform, projections)
    only_c_pairs = {(prompts[i], readings.candidates[c].text)
                    for i, c in choose_answers(readings, only_c, 1)}  # fmt: skip
    uniform_pairs = {(prompts[i], readings.candidates[c].text)
                     for i, c in choose_answers(readings, uniform, 1)}  # fmt: skip
    assert len(uniform_pairs - only_c_pairs) >= 1  # the test needs an answer routing did not pick
    assert len(calls) == len(uniform_pairs - only_c_pairs) * len(three_teachers)
    assert kept[:2] == fresh[:2] and kept[3] == fresh[3]
    for got, want in zip(kept[2], fresh[2], strict=True):
        for field in ("ids", "logprobs", "tail", "mask"):
            assert torch.equal(getattr(got, field), getattr(want, field))
