"""How closely a model follows a teacher on held-out prompts, in either's own tokenizer.

    found = match(teacher, teacher_tokenizer, model, model_tokenizer, prompts, new_tokens=16)
    found["kl_per_token"], found["agreement"], found["log_ratio_per_byte"]

The teacher continues each prompt greedily (`new_tokens` tokens, cut at its first special
token); everything is measured on those continuations, which both sides read as text after
their own rendering of the prompt (a completion model: the prompt after its BOS, if any).

- `kl_per_token`: mean over the continuation's positions of KL(teacher ‖ model) between the two
  next-token distributions, in float64. With one vocabulary this is the full-vocabulary KL at
  every position. Across vocabularies it is taken where the two tokenizations of the
  continuation share a boundary and the next piece is one token on both sides (a 1:1 chunk of
  `polydistill.align.chunks`), over the token strings both vocabularies spell the same way
  (each side's distribution renormalised over that shared set).
- `log_ratio_per_byte`: (log p_teacher − log p_model) of the whole continuation per byte: the
  tokenizer-free view (a one-sample estimate of the sequence KL, at the teacher's mode).
- `agreement`: share of prompts whose model greedy continuation starts with the same
  `AGREE_BYTES` bytes as the teacher's (or all of the teacher's, if shorter);
  `common_prefix_bytes` is the mean length of the bytes they share from the start.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from polydistill.align.chunks import align_byte_lengths
from polydistill.align.tokenbytes import VocabBytes, token_byte_lengths, vocab_bytes
from polydistill.align.vocabmap import student_text_index
from polydistill.chat import render_prompts

AGREE_BYTES = 24


def token_kl(teacher_logits: torch.Tensor, model_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ model) per row of two [positions, vocab] logit tensors, in float64."""
    t = torch.log_softmax(teacher_logits.double(), dim=-1)
    m = torch.log_softmax(model_logits.double(), dim=-1)
    return (t.exp() * (t - m)).sum(dim=-1)


def shared_tokens(teacher: VocabBytes, model: VocabBytes) -> tuple[np.ndarray, np.ndarray]:
    """(teacher ids, model ids) of the text tokens both vocabularies spell with the same bytes
    (one id per byte string on each side)."""
    teacher_index, model_index = student_text_index(teacher), student_text_index(model)
    common = sorted(set(teacher_index) & set(model_index))
    return (
        np.array([teacher_index[b] for b in common], dtype=np.int64),
        np.array([model_index[b] for b in common], dtype=np.int64),
    )


def one_to_one(teacher_lengths: np.ndarray, model_lengths: np.ndarray) -> np.ndarray:
    """[n, 2] token indices (teacher, model) into the continuation where both tokenizations
    start a piece at the same byte and the piece is one token on each side."""
    chunks = align_byte_lengths(teacher_lengths, model_lengths)
    single = (np.diff(chunks.teacher) == 1) & (np.diff(chunks.student) == 1)
    return np.stack([chunks.teacher[:-1][single], chunks.student[:-1][single]], axis=1)


def common_prefix(a: bytes, b: bytes) -> int:
    """How many bytes `a` and `b` share from the start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def agrees(teacher: bytes, model: bytes, n_bytes: int = AGREE_BYTES) -> bool:
    """Whether `model` starts with the first `n_bytes` of `teacher` (all of it when shorter)."""
    want = teacher[:n_bytes]
    return model[: len(want)] == want


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    (text,) = render_prompts(tokenizer, [prompt], "model")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _text_bytes(vocab: VocabBytes, ids: Sequence[int]) -> tuple[list[int], bytes]:
    """`ids` cut at the first special token and at the last whole UTF-8 character; its bytes."""
    kept: list[int] = []
    for i in ids:
        if vocab.is_special[i]:
            break
        kept.append(int(i))
    while kept:
        data = b"".join(vocab.token_bytes[i] for i in kept)
        try:
            data.decode("utf-8")
            return kept, data
        except UnicodeDecodeError:
            kept.pop()
    return [], b""


@torch.no_grad()
def _greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    prompt = torch.tensor([ids])
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


@torch.no_grad()
def _logits(model, prompt: list[int], continuation: list[int]) -> torch.Tensor:
    """Next-token logits at every continuation position: [len(continuation), vocab]."""
    ids = torch.tensor([prompt + continuation])
    logits = model(input_ids=ids).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) + len(continuation) - 1]


def _token_logprobs(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    return torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]


@dataclass(frozen=True)
class Continuation:
    """The teacher's greedy continuation of one prompt and its logits along it."""

    prompt_ids: list[int]
    ids: list[int]
    text: bytes
    logits: torch.Tensor


def teacher_continuations(teacher, tokenizer, prompts, new_tokens=16) -> list[Continuation]:
    """Once per teacher and prompt set: what every `match` against it compares with."""
    vocab = vocab_bytes(tokenizer, "teacher")
    found = []
    for prompt in prompts:
        prompt_ids = _prompt_ids(tokenizer, prompt)
        ids, text = _text_bytes(vocab, _greedy(teacher, prompt_ids, new_tokens))
        logits = _logits(teacher, prompt_ids, ids) if ids else torch.zeros(0)
        found.append(Continuation(prompt_ids, ids, text, logits))
    return found


def match(
    teacher, teacher_tokenizer, model, model_tokenizer, prompts, new_tokens=16, continuations=None
) -> dict:
    """The figures of the module docstring for `model` against `teacher` over `prompts`
    (`continuations`: the teacher's, if already computed for these prompts)."""
    t_vocab = vocab_bytes(teacher_tokenizer, "teacher")
    m_vocab = vocab_bytes(model_tokenizer, "model")
    same = t_vocab.digest == m_vocab.digest
    shared = None if same else shared_tokens(t_vocab, m_vocab)
    if continuations is None:
        continuations = teacher_continuations(teacher, teacher_tokenizer, prompts, new_tokens)
    kls, ratio, n_bytes, agreed, prefix = [], 0.0, 0, 0, 0
    for prompt, teacher_side in zip(prompts, continuations, strict=True):
        t_cont, text, t_logits = teacher_side.ids, teacher_side.text, teacher_side.logits
        m_prompt = _prompt_ids(model_tokenizer, prompt)
        _, m_text = _text_bytes(m_vocab, _greedy(model, m_prompt, new_tokens))
        agreed += agrees(text, m_text)
        prefix += common_prefix(text, m_text)
        if not t_cont:
            continue
        decoded = text.decode("utf-8")
        m_cont = t_cont if same else model_tokenizer(decoded, add_special_tokens=False)["input_ids"]
        m_logits = _logits(model, m_prompt, m_cont)
        ratio += float(
            _token_logprobs(t_logits, t_cont).sum() - _token_logprobs(m_logits, m_cont).sum()
        )
        n_bytes += len(text)
        if same:
            kls.append(token_kl(t_logits, m_logits))
            continue
        pairs = one_to_one(
            token_byte_lengths(t_vocab, t_cont, decoded, "teacher"),
            token_byte_lengths(m_vocab, m_cont, decoded, "model"),
        )
        t_rows = t_logits[pairs[:, 0]][:, shared[0]]
        m_rows = m_logits[pairs[:, 1]][:, shared[1]]
        kls.append(token_kl(t_rows, m_rows))
    kl = torch.cat(kls) if kls else torch.zeros(0, dtype=torch.float64)
    return {
        "kl_per_token": float(kl.mean()) if len(kl) else None,
        "kl_positions": len(kl),
        "kl_method": "full vocabulary" if same else "1:1 chunks, shared token strings",
        "log_ratio_per_byte": ratio / n_bytes if n_bytes else None,
        "agreement": agreed / len(prompts),
        "common_prefix_bytes": prefix / len(prompts),
        "prompts": len(prompts),
    }
