"""Projection of teacher distributions into the student's vocabulary: worked examples, a
straightforward reference implementation of the rule, and the chat-rendering contract."""

import math
from collections import defaultdict

import numpy as np
import pytest
from align_tokenizers import tokenizer, toy_byte_level, toy_metaspace
from transformers import SentencePieceBackend

from polydistill.align.project import project, tail_share
from polydistill.align.render import encode_text, render_aligned
from polydistill.align.vocabmap import vocab_map
from polydistill.chat import PlainText, encode_prompts
from polydistill.data.records import Turn
from polydistill.errors import UserError
from polydistill.targets import validate_targets
from polydistill.world.real_vocab import gemma_style_sentencepiece_path
from polydistill.world.tokenizers import O200K_PATTERN

K = 6
CONVERSATION = (
    Turn("system", "Count in digits."),
    Turn("user", "One?"),
    Turn("assistant", "1"),
    Turn("user", "And on?"),
)


def _id(tok, piece: str) -> int:
    special = tok.convert_tokens_to_ids(piece)
    if piece in tok.all_special_tokens:
        return special
    (token_id,) = encode_text(tok, piece, "test")
    return token_id


def _rows(tok, n_rows: int, spec: dict[int, dict[str, float]], k: int = K):
    """Teacher top-k arrays: rows in `spec` as given (rest of k: -inf), others empty."""
    ids = np.tile(np.arange(1000, 1000 + k), (n_rows, 1))
    logprobs = np.full((n_rows, k), -np.inf)
    for row, dist in spec.items():
        for col, (piece, prob) in enumerate(dist.items()):
            ids[row, col], logprobs[row, col] = _id(tok, piece), math.log(prob)
    return ids, logprobs


def _target(targets, row: int, student) -> tuple[dict[str, float], float]:
    dist = {
        student.convert_ids_to_tokens(int(i)): math.exp(float(lp))
        for i, lp in zip(targets.ids[row], targets.logprobs[row], strict=True)
        if lp > -math.inf
    }
    return dist, float(targets.tail[row])


def _close(got: tuple[dict[str, float], float], want: dict[str, float], tail: float):
    dist, got_tail = got
    assert set(dist) == set(want)
    for piece, prob in want.items():
        assert dist[piece] == pytest.approx(prob, abs=1e-6), piece
    assert got_tail == pytest.approx(tail, abs=1e-6)


def test_teacher_token_split_into_student_digits_conditions_on_consumed_bytes():
    teacher = toy_byte_level(["12", "123", "124"], pattern=O200K_PATTERN)
    student = toy_byte_level([])  # one digit per token
    seq = render_aligned(teacher, student, "n?", "123", "digits")
    ts, ss = seq.teacher_start, seq.student_start
    top, logprobs = _rows(
        teacher,
        len(seq.teacher_ids),
        {
            ts - 1: {"123": 0.6, "12": 0.1, "124": 0.1, "5": 0.1},  # tail 0.1
            ts: {"<|im_end|>": 0.7, "4": 0.2},
        },
    )
    targets = project(seq, top, logprobs, vocab_map(teacher, student, "digits"))
    _close(_target(targets, ss - 1, student), {"1": 0.8, "5": 0.1}, 0.1)
    # After "1" only candidates starting with "1" remain (0.8 of the top-k's 0.9), and so does
    # that share of the teacher's tail: 0.1 * 0.8 / 0.9. "124" continues with "2".
    tail = 0.1 * 0.8 / 0.9
    _close(_target(targets, ss, student), {"2": 0.8 / (0.8 + tail)}, tail / (0.8 + tail))
    # after "12": "12" itself ends here (unplaceable), "124" continues with "4"
    z = 0.8 + tail
    _close(_target(targets, ss + 1, student), {"3": 0.6 / z, "4": 0.1 / z}, (0.1 + tail) / z)
    _close(_target(targets, ss + 2, student), {"<|im_end|>": 0.7, "4": 0.2}, 0.1)
    assert targets.mask.nonzero().flatten().tolist() == [ss - 1, ss, ss + 1, ss + 2]


def test_student_token_spanning_teacher_digits_gets_the_whole_path():
    teacher = toy_byte_level([])
    student = toy_byte_level(["12", "123", "15"], pattern=O200K_PATTERN)
    seq = render_aligned(teacher, student, "n?", "123", "digits")
    ts, ss = seq.teacher_start, seq.student_start
    top, logprobs = _rows(
        teacher,
        len(seq.teacher_ids),
        {
            ts - 1: {"1": 0.5, "2": 0.3, "4": 0.2},
            ts: {"2": 0.5, "5": 0.3, "3": 0.2},
            ts + 1: {"3": 0.9, "4": 0.1},
        },
    )
    targets = project(seq, top, logprobs, vocab_map(teacher, student, "digits"))
    want = {"123": 0.25 * 0.9, "2": 0.3, "4": 0.2, "15": 0.5 * 0.3, "1": 0.5 * 0.2, "12": 0.025}
    _close(_target(targets, ss - 1, student), want, 0.0)


def test_long_consumed_prefix_is_compared_bytewise():
    teacher = toy_byte_level(["abcdefghijk", "abcdefghijz", "abcdefghij"])
    student = toy_byte_level(["abcdefghij"[:n] for n in range(2, 11)])
    seq = render_aligned(teacher, student, "q", "abcdefghijk", "long")
    ts, ss = seq.teacher_start, seq.student_start
    top, logprobs = _rows(
        teacher,
        len(seq.teacher_ids),
        {ts - 1: {"abcdefghijk": 0.5, "abcdefghijz": 0.3, "x": 0.2}},
    )
    targets = project(seq, top, logprobs, vocab_map(teacher, student, "long"))
    _close(_target(targets, ss - 1, student), {"abcdefghij": 0.8, "x": 0.2}, 0.0)
    _close(_target(targets, ss, student), {"k": 0.5 / 0.8, "z": 0.3 / 0.8}, 0.0)


def test_markup_bos_and_one_sided_specials_stay_out_of_the_loss():
    teacher, student = tokenizer("qwen3"), tokenizer("gemma-style")
    seq = render_aligned(teacher, student, "Say hi", "Hi there, 42!", "qwen")
    assert student.convert_ids_to_tokens(int(seq.student_ids[0])) == "<bos>"
    top, logprobs = _rows(teacher, len(seq.teacher_ids), {})
    targets = project(seq, top, logprobs, vocab_map(teacher, student, "qwen"))
    completion = len(seq.student_lengths)
    rows = list(range(seq.student_start - 1, seq.student_start + completion))
    assert targets.mask.nonzero().flatten().tolist() == rows
    assert int(seq.student_ids[-1]) == student.eos_token_id  # end-of-turn closes the rendering
    validate_targets(targets, len(student))


def _longest(vmap, data: bytes) -> int:
    for size in range(len(data), 0, -1):
        if data[:size] in vmap.student_by_bytes:
            return vmap.student_by_bytes[data[:size]]
    return -1


def _reference_target(seq, top, probs, vmap, start, end, observed_student, first, is_end):
    """The rule of `project`, step by step for one student token (slow, obvious)."""
    text, data = seq.text, vmap.teacher.token_bytes
    ends = np.cumsum(seq.teacher_lengths)
    starts = ends - seq.teacher_lengths
    token_start = lambda r: len(text) if r == len(ends) else int(starts[r])  # noqa: E731
    consumed = text[token_start(first) : start]
    placed, lost, weight, r = defaultdict(float), 0.0, 1.0, first
    end_pair = (int(seq.teacher_ids[-1]), int(seq.student_ids[-1]))
    while True:
        row = seq.teacher_start + r - 1
        if row < 0:
            return None
        observed = int(seq.teacher_ids[seq.teacher_start + r])
        last = is_end or ends[r] >= end
        path = text[start : token_start(r)]
        for w, p in zip(top[row].tolist(), probs[row].tolist(), strict=True):
            if w == observed:
                placed[observed_student] += weight * p if last else 0.0
                continue
            if vmap.teacher.is_special[w]:
                if consumed and r == first:
                    continue
                piece = _longest(vmap, path) if path else vmap.piece[w]
                piece = end_pair[1] if w == end_pair[0] and not path else piece
            else:
                if r == first and not data[w].startswith(consumed):
                    continue
                rest = path + data[w][len(consumed) if r == first else 0 :]
                piece = _longest(vmap, rest) if rest else -1
            if piece < 0:
                lost += weight * p
            else:
                placed[int(piece)] += weight * p
        own_tail = max(0.0, 1.0 - sum(probs[row]))
        if consumed and r == first and own_tail < 1.0:  # as consistent as the top-k
            fits = sum(
                p
                for w, p in zip(top[row], probs[row], strict=True)
                if not vmap.teacher.is_special[w] and data[w].startswith(consumed)
            )
            own_tail *= fits / (1.0 - own_tail)
        lost += weight * own_tail
        if last:
            break
        weight *= sum(p for w, p in zip(top[row], probs[row], strict=True) if w == observed)
        r += 1
    total = sum(placed.values()) + lost
    if total == 0:
        return None  # nothing the teacher said fits the student's context
    return {i: p / total for i, p in placed.items() if p > 0}, lost / total


def _random_rows(seq, teacher, rng, k=8):
    """Candidates near the truth: the observed token, tokens of text pieces, end, random ids."""
    text = seq.text.decode()
    pool = {int(i) for i in seq.teacher_ids}
    for _ in range(60):
        a = int(rng.integers(0, max(1, len(text))))
        pool.update(encode_text(teacher, text[a : a + int(rng.integers(1, 6))], "t"))
    pool = np.array(sorted(pool))
    top = np.zeros((len(seq.teacher_ids), k), dtype=np.int64)
    for row in range(len(seq.teacher_ids)):
        top[row] = rng.choice(pool, size=k, replace=False)
        if row + 1 < len(seq.teacher_ids) and rng.random() < 0.8:
            nxt = seq.teacher_ids[row + 1]
            if nxt not in top[row]:
                top[row, 0] = nxt
    logits = rng.normal(size=top.shape) * 2
    probs = (
        np.exp(logits) / np.exp(logits).sum(1, keepdims=True) * rng.uniform(0.6, 1, (len(top), 1))
    )
    return top, np.log(probs)


@pytest.mark.parametrize(
    ("teacher_name", "student_name"),
    [
        ("o200k_harmony", "qwen3"),
        ("qwen3", "o200k_harmony"),
        ("o200k_harmony", "gemma-style"),
        ("gemma-style", "qwen3"),
    ],
)
@pytest.mark.parametrize("prompt", ["Count.", CONVERSATION, PlainText("Count: 1, 2,")])
def test_vectorised_projection_matches_the_reference(teacher_name, student_name, prompt):
    """Whatever the prompt (one user turn, a conversation, text): only the answer's bytes align."""
    teacher, student = tokenizer(teacher_name), tokenizer(student_name)
    vmap = vocab_map(teacher, student, teacher_name)
    rng = np.random.default_rng(7)
    completion = "Total: 12345 apples — 日本語のテキスト 🚀🔥 and مرحبا; x=3.14159\n    return"
    seq = render_aligned(teacher, student, prompt, completion, teacher_name)
    t_prompt = encode_prompts(teacher, [prompt], "t")[0]
    assert list(seq.teacher_ids[: seq.teacher_start]) == t_prompt
    assert seq.student_start == len(encode_prompts(student, [prompt], "s")[0])
    top, logprobs = _random_rows(seq, teacher, rng)
    targets = project(seq, top, logprobs, vmap, k=64)
    probs = np.exp(logprobs)
    student_ends = np.cumsum(seq.student_lengths)
    teacher_ends = np.cumsum(seq.teacher_lengths)
    spans = [(int(e - n), int(e)) for e, n in zip(student_ends, seq.student_lengths, strict=True)]
    spans.append((len(seq.text), len(seq.text)))
    for j, (start, end) in enumerate(spans):
        is_end = j == len(spans) - 1
        first = len(teacher_ends) if is_end else int(np.searchsorted(teacher_ends, start, "right"))
        sid = int(seq.student_ids[seq.student_start + j])
        want = _reference_target(seq, top, probs, vmap, start, end, sid, first, is_end)
        row = seq.student_start + j - 1
        assert bool(targets.mask[row]) == (want is not None)
        if want is None:
            continue
        dist = {
            int(i): math.exp(float(lp))
            for i, lp in zip(targets.ids[row], targets.logprobs[row], strict=True)
            if lp > -math.inf
        }
        assert dist.keys() == want[0].keys(), j
        for i, p in want[0].items():
            assert dist[i] == pytest.approx(p, rel=1e-5, abs=1e-7)
        assert float(targets.tail[row]) == pytest.approx(want[1], abs=1e-6)
    assert 0.0 < tail_share(targets) < 1.0


def test_truncation_to_k_moves_the_rest_to_the_tail():
    teacher = toy_byte_level(["12", "123", "124"], pattern=O200K_PATTERN)
    student = toy_byte_level([])
    seq = render_aligned(teacher, student, "n?", "123", "digits")
    ts, ss = seq.teacher_start, seq.student_start
    top, logprobs = _rows(
        teacher, len(seq.teacher_ids), {ts - 1: {"123": 0.5, "5": 0.2, "6": 0.2, "7": 0.1}}
    )
    targets = project(seq, top, logprobs, vocab_map(teacher, student, "digits"), k=2)
    _close(_target(targets, ss - 1, student), {"1": 0.5, "5": 0.2}, 0.3)


def test_lossy_normaliser_names_the_teacher():
    with pytest.raises(UserError, match=r"teacher 'qwen'.*round-trip.*NFC"):
        render_aligned(tokenizer("qwen3"), toy_byte_level([]), "q", "cafe\u0301", "qwen")


def test_a_teacher_without_a_chat_template_reads_as_a_completion_model():
    bare = toy_metaspace(["ab", "cd"])
    bare.chat_template = None
    seq = render_aligned(bare, toy_byte_level(["ab"]), "cd", "ab", "gemma")
    # the prompt is the text itself (this tokenizer adds no BOS), then the answer, then eos
    prompt_ids = bare("cd", add_special_tokens=False)["input_ids"]
    answer_ids = bare("ab", add_special_tokens=False)["input_ids"]
    assert list(seq.teacher_ids) == [*prompt_ids, *answer_ids, bare.eos_token_id]
    assert seq.teacher_start == len(prompt_ids)
    with pytest.raises(UserError, match=r"teacher 'gemma': the prompt is empty"):
        render_aligned(bare, toy_byte_level([]), "", "ab", "gemma")


def test_slow_tokenizer_names_the_teacher_and_the_conversion():
    slow = SentencePieceBackend(
        vocab_file=str(gemma_style_sentencepiece_path()),
        chat_template="{{ messages[0]['content'] }}",
        eos_token="<eos>",
    )
    with pytest.raises(UserError, match=r"teacher 'gemma': tokenizer has no fast backend.*convert"):
        render_aligned(slow, toy_byte_level([]), "q", "ab", "gemma")
