"""One prompt as the rest of the pipeline sees it, whatever file or layout it came from.

A `PromptRecord` is either a chat prompt (`messages`: system/user turns, possibly earlier
assistant turns of the conversation, ending with a user turn) or a completion-style prompt
(`text`: raw text that a model continues, without a chat template). Its `id` is a stable hash
of the normalised prompt alone, so two rows asking the same thing share an id on every machine
and in every run, whatever their reference, tag or position in the file.

Normalisation (what "the same prompt" means): Unicode NFC, line endings as `\\n`, surrounding
whitespace of each turn removed. Whitespace inside a turn is kept (it matters in code).
"""

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
Layout = Literal["messages", "prompt", "text"]
Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True)
class PromptRecord:
    """A prompt with its id, split and optional reference answer and tag."""

    id: str
    """16 hex digits: the 64-bit BLAKE2b of the normalised prompt (see `prompt_id`)."""
    split: Split
    layout: Layout
    """The layout of the row it came from: `messages`, `prompt` (one user turn) or `text`."""
    messages: tuple[Turn, ...] | None = None
    """The chat prompt (layouts `messages` and `prompt`); None for a completion-style prompt."""
    text: str | None = None
    """The completion-style prompt (layout `text`); None for a chat prompt."""
    reference: str | None = None
    """A reference answer, for evaluation and the gold-reading baselines, never for the student."""
    tag: str | None = None
    """The row's tag: balancing, per-tag report rows, routing (what world domains are today)."""
    origin: str = ""
    """Where the row was read, e.g. `prompts.jsonl line 12`."""

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError("a PromptRecord holds exactly one of messages and text")

    @property
    def completion_style(self) -> bool:
        """True for a raw-text prompt that a model continues without a chat template."""
        return self.text is not None

    def chat(self) -> list[dict[str, str]]:
        """The messages as chat-template input (`[{"role": ..., "content": ...}]`)."""
        if self.messages is None:
            raise ValueError(f"prompt {self.id} is completion-style text, not a chat")
        return [{"role": turn.role, "content": turn.content} for turn in self.messages]


def normalise(text: str) -> str:
    """NFC, `\\n` line endings, no surrounding whitespace."""
    text = unicodedata.normalize("NFC", text)
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def prompt_id(messages: tuple[Turn, ...] | None, text: str | None) -> str:
    """The stable id of a normalised prompt: BLAKE2b-64 of its canonical JSON, in hex.

    Chat and completion-style prompts of the same words differ (they are different inputs).
    """
    if messages is not None:
        canonical = ["chat", [[turn.role, turn.content] for turn in messages]]
    else:
        canonical = ["text", text]
    encoded = json.dumps(canonical, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.blake2b(encoded, digest_size=8).hexdigest()


def make_record(
    split: Split,
    layout: Layout,
    *,
    messages: tuple[Turn, ...] | None = None,
    text: str | None = None,
    reference: str | None = None,
    tag: str | None = None,
    origin: str = "",
) -> PromptRecord:
    """A record of an already normalised prompt, with its id computed."""
    return PromptRecord(
        id=prompt_id(messages, text),
        split=split,
        layout=layout,
        messages=messages,
        text=text,
        reference=reference,
        tag=tag,
        origin=origin,
    )
