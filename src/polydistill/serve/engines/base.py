"""The generation engine protocol that the routes drive, and the events an engine emits.

An engine turns one prompt (token ids) and its sampling parameters into a stream of events:
optionally the prompt's own logprobs first, then text deltas, then exactly one `Finished`.
The routes never see model internals, so the in-process transformers engine, an upstream
vLLM-compatible server and the instant engine used for overhead measurements are
interchangeable.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol


class EngineError(RuntimeError):
    """The engine failed to produce a result; the request is answered with a 5xx, unbilled."""


@dataclass(frozen=True)
class SamplingParams:
    """What to generate for one sequence. `logprobs` is the number of alternatives to report
    per token (0 reports only the chosen token's logprob); None reports none."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: bool = False


@dataclass(frozen=True)
class TokenLogprob:
    """One token as text with its logprob and the top alternatives (text, logprob), best first."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class PromptLogprobs:
    """Logprobs of the prompt's tokens under the model (the first token has none)."""

    entries: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class TextDelta:
    """New text and the tokens it came from (`tokens` counts them even when `logprobs` is
    empty, and may be positive with empty text while bytes of a character are held back)."""

    text: str
    tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Finished:
    """The last event of a sequence: why it ended and how many tokens it generated."""

    reason: FinishReason
    completion_tokens: int


EngineEvent = PromptLogprobs | TextDelta | Finished


class Engine(Protocol):
    """A text generator for one model. `generate` must end with `Finished` unless it raises
    `EngineError`; closing the iterator early cancels the sequence."""

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[EngineEvent]:
        """Stream the events of one sequence."""
        ...

    async def start(self) -> None:
        """Acquire workers and connections; called once before the first request."""
        ...

    async def close(self) -> None:
        """Stop workers; sequences still running end with `Finished("cancelled")`."""
        ...
