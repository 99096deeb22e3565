"""Prompts longer than a model's context: each model's own token count against its limit.

The caller passes, per model (each teacher, the student), a `ContextLimit`: how many tokens the
model's rendering of a prompt takes (its chat template for a chat prompt, the raw text for a
completion-style one) and the most prompt tokens it accepts (its context less the room its answer
needs). `data` itself never loads a tokenizer.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from polydistill.data.records import PromptRecord


@dataclass(frozen=True)
class ContextLimit:
    token_length: Callable[[PromptRecord], int]
    """The number of tokens of the prompt as this model reads it."""
    max_tokens: int
    """The most prompt tokens this model accepts."""


def too_long_for(record: PromptRecord, limits: Mapping[str, ContextLimit]) -> list[str]:
    """The models (in the order given) whose context the prompt exceeds."""
    return [name for name, limit in limits.items() if limit.token_length(record) > limit.max_tokens]
