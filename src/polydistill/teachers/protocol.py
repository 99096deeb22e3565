"""The one interface every teacher source implements, and what it hands back.

    rows = teacher.score(prompts, completions, top_k=32, temperature=1.0)
    texts = teacher.complete(prompts, samples=1, max_new_tokens=24, seed=0)

A teacher works in its own vocabulary and its own chat template. Prompts are `chat.Prompt`s: a
string (one user turn), a whole conversation (a tuple of turns) or completion-style text, each
rendered by the teacher's own template (`chat.encode_prompts`). `score` reads each answer as the
teacher renders it (`chat.render_answer`: the prompt, generation prompt, the completion
tokenized on its own, end-of-turn) and returns, per answer, a `TeacherRows`: the rendering's
ids, the teacher's top-k next-token ids and log-probs at every position that predicts a
completion token or the end-of-turn, and the log-prob of every observed token (prompt
included), from which bits per byte follow. The local model, a served model and the capture
store all return exactly this, so alignment, fusion and the store never ask where a teacher
lives.
"""

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from transformers import PreTrainedTokenizerBase

from polydistill.chat import Prompt

Progress = Callable[[int, int], None]
"""(rows done in this batch, tokens in this batch): for progress bars."""


@dataclass(frozen=True)
class TeacherRows:
    """One teacher's reading of one rendered answer.

    - `ids` `[T]` int64: the teacher's rendering; `ids[start:-1]` is the completion, `ids[-1]`
      the end-of-turn token.
    - `top_ids`, `top_logprobs` `[T - start, k]`: row j is the teacher's distribution over
      `ids[start + j]` (computed at position `start + j - 1`), at the scoring temperature; the
      k ids of a row are distinct, log-probs descending.
    - `token_logprobs` `[T - 1]` float32: log-prob at temperature 1 of each observed token
      `ids[1:]`, prompt markup and prompt included.
    """

    ids: np.ndarray
    start: int
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    token_logprobs: np.ndarray

    def full_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows indexed by teacher position `[T, k]` (row i: after token i), as
        `align.project` takes them; positions before the completion hold nothing (-inf)."""
        k = self.top_ids.shape[1]
        ids = np.zeros((len(self.ids), k), dtype=np.int64)
        logprobs = np.full((len(self.ids), k), -np.inf, dtype=np.float32)
        ids[self.start - 1 : len(self.ids) - 1] = self.top_ids
        logprobs[self.start - 1 : len(self.ids) - 1] = self.top_logprobs
        return ids, logprobs

    def bits(self, completion_only: bool = False) -> float:
        """Bits the teacher spends on the observed tokens (all, or the completion's)."""
        spent = self.token_logprobs[self.start - 1 :] if completion_only else self.token_logprobs
        return float(-spent.astype(np.float64).sum() / np.log(2.0))


class Teacher(Protocol):
    """A source of teacher distributions: a local checkpoint, a served model or the store."""

    name: str
    tokenizer: PreTrainedTokenizerBase

    def fingerprint(self) -> dict[str, str]:
        """What identifies this teacher's outputs: weights (or served model id and revision),
        tokenizer and chat template hashes."""
        ...

    def complete(
        self,
        prompts: Sequence[Prompt],
        *,
        samples: int,
        max_new_tokens: int,
        seed: int,
        on_batch: Progress | None = None,
    ) -> list[list[str]]:
        """`samples` answers per prompt as text (end-of-turn removed): `[sample][prompt]`,
        sample 0 greedy, later ones sampled at temperature 1, seeded."""
        ...

    def score(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str],
        *,
        top_k: int,
        temperature: float,
        on_batch: Progress | None = None,
    ) -> list[TeacherRows]:
        """The teacher's reading of each (prompt, completion), in order."""
        ...


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """Hashes of the tokenizer (its whole `tokenizer.json`) and of its chat template
    (`completion` for a completion model, which has none)."""
    template = getattr(tokenizer, "chat_template", None)
    return {
        "tokenizer": text_hash(tokenizer.backend_tokenizer.to_str()),
        "chat_template": text_hash(template) if template else "completion",
    }


def check_rows(rows: TeacherRows, who: str) -> None:
    """Shapes consistent with the rendering; a source handing back anything else is a bug."""
    answer = len(rows.ids) - rows.start
    if rows.top_ids.shape != rows.top_logprobs.shape or rows.top_ids.shape[0] != answer:
        raise ValueError(f"{who}: top-k rows {rows.top_ids.shape} for an answer of {answer}")
    if rows.token_logprobs.shape != (len(rows.ids) - 1,):
        raise ValueError(f"{who}: {rows.token_logprobs.shape} token log-probs for {len(rows.ids)}")


@runtime_checkable
class HoldsWeights(Protocol):
    """A teacher whose weights live in this process and can be dropped and loaded again."""

    def release(self) -> None: ...


def release_weights(teacher: Teacher) -> None:
    """Free a local teacher's weights once a pass over it is done (others hold none)."""
    if isinstance(teacher, HoldsWeights):
        teacher.release()
