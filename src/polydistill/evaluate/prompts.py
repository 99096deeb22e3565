"""Held-out rows as `PromptRecord`s, and their prompts as token ids in a model's own template.

    records = as_records(heldout)                  # {tag: [PromptRecord, ...]}
    ids = encode_records(tokenizer, records["math"], who)

Records are rendered as the student stage renders them (`chat.record_prompt`,
`chat.encode_prompts`): a chat record (`messages`, `prompt`) by the tokenizer's chat template with
the generation prompt, a completion-style record (`text`) as its raw text after the BOS token
when the tokenizer prepends one (`chat.bos_prefix`: what a base model saw in pre-training), no
template, for every model; a completion model reads a one-user-turn prompt as its text.
World `Example`s (anything with `prompt` and `answer`) are still accepted while callers move to
records: each becomes one user turn, its answer the reference, as `chat.render_prompts` renders it.
"""

from collections.abc import Mapping, Sequence
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from polydistill.chat import encode_prompts, record_prompt
from polydistill.data.records import PromptRecord, Turn, make_record
from polydistill.errors import UserError


class Question(Protocol):
    """A world `Example`: a prompt asked as one user turn, and its gold answer."""

    prompt: str
    answer: str


def as_record(row: PromptRecord | Question, tag: str) -> PromptRecord:
    """`row` itself, or a question as a one-turn chat record with its answer as reference."""
    if isinstance(row, PromptRecord):
        return row
    # Not normalised: the prompt is rendered exactly as the world's evaluation always did.
    return make_record(
        "test", "prompt", messages=(Turn("user", row.prompt),), reference=row.answer, tag=tag
    )


def as_records(
    heldout: Mapping[str, Sequence[PromptRecord | Question]],
) -> dict[str, list[PromptRecord]]:
    """Every tag's rows as records, each checked to have a reference."""
    records = {tag: [as_record(row, tag) for row in rows] for tag, rows in heldout.items()}
    for tag, rows in records.items():
        if not rows:
            raise UserError(f"evaluation: tag {tag!r} has no prompts")
        missing = [r for r in rows if r.reference is None]
        if missing:
            where = missing[0].origin or f"prompt {missing[0].id}"
            raise UserError(
                f"evaluation: {len(missing)} of {len(rows)} prompts of tag {tag!r} have no "
                f"reference answer (first: {where}); give a reference or completion column, a "
                "trailing assistant turn, or text rows"
            )
    return records


def prompt_text(record: PromptRecord) -> str:
    """What the prompt asks, as text: the last user turn, or the completion-style text."""
    if record.text is not None:
        return record.text
    users = [turn.content for turn in record.messages or () if turn.role == "user"]
    return users[-1] if users else ""


def encode_records(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[PromptRecord], who: str
) -> list[list[int]]:
    """Each record's prompt as ids, as every model reads it in training (`chat.encode_prompts`):
    chat template with generation prompt, or BOS + plain text (text rows for every model; a
    one-user-turn prompt for a completion model); errors name the record's origin."""
    names = [record.origin or f"prompt {record.id}" for record in records]
    out = encode_prompts(tokenizer, [record_prompt(r) for r in records], who, names)
    for ids, name in zip(out, names, strict=True):
        if not ids:
            raise UserError(f"{who}: {name} encodes to no tokens")
    return out
