"""The row layouts users already have, and how each becomes a prompt, a reference and a tag.

- `messages`: a list of `{role, content}` turns (roles system, user, assistant; other keys are
  ignored). A trailing assistant turn is the reference answer; what is left must end with a user
  turn (earlier assistant turns stay, as the conversation so far). In CSV the column holds the
  list as JSON text.
- `prompt`: a prompt string, asked as one user turn; `reference`, else `completion`, is the
  reference answer (an empty one is none: CSV cannot tell empty from null).
- `text`: a plain text split by `data.text_split` into a completion-style prompt and its
  continuation, which becomes the reference.

Any layout may have a `tag` column. Column names are configurable (`data.columns`); `auto`
picks the first layout, in the order above, whose column the file's first row has.
"""

import json
from dataclasses import dataclass
from typing import Literal

from polydistill.data.config import DataConfig
from polydistill.data.records import ROLES, Layout, Turn, normalise
from polydistill.data.text_split import split_text
from polydistill.errors import UserError

LAYOUTS: tuple[Layout, ...] = ("messages", "prompt", "text")
Dropped = Literal["empty", "unsplittable"]


@dataclass(frozen=True)
class Parsed:
    """A row's normalised prompt (chat `messages` or completion-style `text`), reference, tag."""

    messages: tuple[Turn, ...] | None
    text: str | None
    reference: str | None
    tag: str | None


def expected_layouts(config: DataConfig) -> str:
    c = config.columns
    return (
        f"{c.messages!r} (chat turns), {c.prompt!r} (with optional {c.completion!r} or "
        f"{c.reference!r}) or {c.text!r} (split into prompt and continuation)"
    )


def detect_layout(row: dict, config: DataConfig, origin: str) -> Layout:
    """The layout of a file, from its first row: `data.layout`, or the first whose column it has."""
    if config.layout != "auto":
        column = getattr(config.columns, config.layout)
        if column not in row:
            raise UserError(
                f"data: {origin}: no column {column!r}, which layout {config.layout} needs; "
                f"the row has {_names(row)}"
            )
        return config.layout
    for layout in LAYOUTS:
        if getattr(config.columns, layout) in row:
            return layout
    raise UserError(
        f"data: {origin}: no column of a known layout; expected {expected_layouts(config)}; "
        f"the row has {_names(row)}; map yours in data.columns"
    )


def parse_row(row: dict, layout: Layout, config: DataConfig, origin: str) -> Parsed | Dropped:
    """The row's prompt, reference and tag, or why it has no prompt."""
    columns = config.columns
    column = getattr(columns, layout)
    if column not in row:
        raise UserError(
            f"data: {origin}: no column {column!r}, which the file's first row has (layout "
            f"{layout})"
        )
    tag = _tag(row.get(columns.tag), origin, columns.tag)
    value = row[column]
    if value is None:
        return "empty"
    if layout == "messages":
        return _messages(value, tag, origin, column)
    text = _string(value, origin, column)
    if layout == "prompt":
        prompt = normalise(text)
        if not prompt:
            return "empty"
        reference = _optional(row, columns.reference, origin)
        if reference is None:
            reference = _optional(row, columns.completion, origin)
        return Parsed((Turn("user", prompt),), None, reference, tag)
    text = normalise(text)
    if not text:
        return "empty"
    halves = split_text(text, config.text_split)
    if halves is None:
        return "unsplittable"
    return Parsed(None, halves[0], halves[1], tag)


def _messages(value: object, tag: str | None, origin: str, column: str) -> Parsed | Dropped:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise UserError(
                f"data: {origin}: column {column!r} is not a JSON list of turns ({error.msg})"
            ) from None
    if not isinstance(value, list | tuple):
        raise UserError(
            f"data: {origin}: column {column!r} holds {type(value).__name__}, expected a list "
            "of {role, content} turns"
        )
    turns = [_turn(turn, origin, f"{column}[{i}]") for i, turn in enumerate(value)]
    reference = None
    if turns and turns[-1].role == "assistant":
        reference = turns.pop().content or None
    if not turns or turns[-1].role != "user":
        raise UserError(
            f"data: {origin}: {column!r} must end with a user turn (then optionally the "
            "reference answer as an assistant turn)"
        )
    normalised = tuple(Turn(turn.role, normalise(turn.content)) for turn in turns)
    if not normalised[-1].content:
        return "empty"
    return Parsed(normalised, None, reference, tag)


def _turn(turn: object, origin: str, where: str) -> Turn:
    if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
        raise UserError(f"data: {origin}: {where} is not a {{role, content}} mapping")
    if turn["role"] not in ROLES:
        raise UserError(
            f"data: {origin}: {where}.role is {turn['role']!r}; expected system, user or assistant"
        )
    return Turn(turn["role"], _string(turn["content"], origin, f"{where}.content"))


def _string(value: object, origin: str, column: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"data: {origin}: {column!r} holds {type(value).__name__}, expected text")
    return value


def _optional(row: dict, column: str, origin: str) -> str | None:
    """An optional text column: absent, null and empty (CSV's null) are all None."""
    value = row.get(column)
    return None if value is None or value == "" else _string(value, origin, column)


def _tag(value: object, origin: str, column: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | dict):
        raise UserError(f"data: {origin}: {column!r} holds {type(value).__name__}, expected text")
    return str(value)


def _names(row: dict) -> str:
    return "columns " + ", ".join(map(repr, row)) if row else "no columns"
