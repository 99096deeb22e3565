"""The configuration reference, generated from the fields' own docstrings: one row per key of
`RunConfig`, in declaration order, with its default and meaning.

    python -m polydistill.config.documentation                 # print the table
    python -m polydistill.config.documentation --write README.md   # replace the README's copy

Each field is documented once, where it is declared (`use_attribute_docstrings`); the README's
"Configuration reference" is this module's output between two markers, and a test keeps it so.
A field without a docstring is an error here, so that no key goes undocumented.
"""

import argparse
import re
import sys
import types
import typing
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

START = (
    "<!-- config-reference:start (python -m polydistill.config.documentation --write README.md) -->"
)
END = "<!-- config-reference:end -->"


class Undocumented(Exception):
    """Fields declared without a docstring."""


def _sections(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The config sections (models) an annotation holds, and whether it is a list of them."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    if origin is typing.Annotated:
        return _sections(typing.get_args(annotation)[0])
    if origin is list:
        found, _ = _sections(typing.get_args(annotation)[0])
        return found, bool(found)
    if origin in (typing.Union, types.UnionType):
        found, listed = [], False
        for arm in typing.get_args(annotation):
            models, is_list = _sections(arm)
            found += [m for m in models if m not in found]
            listed = listed or is_list
        return found, listed
    return [], False


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""  # a section: its keys have their own rows
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str | Path):
        return f"`{value}`"
    return f"`{value!r}`" if isinstance(value, list | dict) else str(value)


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(key, default, meaning) for every field of `model` and of the sections below it; raises
    `Undocumented` naming every field without a docstring."""
    missing: list[str] = []
    found: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if not field.description:
            missing.append(key)
        found.append((key, _default(field), _one_line(field.description or "")))
        sections, listed = _sections(field.annotation)
        for section in sections:
            try:
                found += rows(section, f"{key}[]." if listed else f"{key}.")
            except Undocumented as error:
                missing += error.args[0]
    if missing:
        raise Undocumented(missing)
    yield from found


def table(model: type[BaseModel] | None = None) -> str:
    """The reference as a Markdown table (of `RunConfig` unless told)."""
    if model is None:
        from polydistill.config import RunConfig

        model = RunConfig
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    seen: set[str] = set()
    for key, default, meaning in rows(model):
        if key in seen:  # `data`'s two forms share no keys but `data` itself
            continue
        seen.add(key)
        lines.append(f"| `{key}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def replaced(document: str, generated: str) -> str:
    """`document` with the text between the markers replaced by `generated`."""
    if document.count(START) != 1 or document.count(END) != 1:
        raise ValueError(f"the document needs exactly one {START!r} and one {END!r}")
    head, rest = document.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{generated}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="replace the table between the markers")
    args = parser.parse_args(argv)
    try:
        generated = table()
    except Undocumented as error:
        print(f"error: undocumented config fields: {', '.join(error.args[0])}", file=sys.stderr)
        return 2
    if args.write is None:
        print(generated, end="")
        return 0
    args.write.write_text(replaced(args.write.read_text(encoding="utf-8"), generated))
    return 0


if __name__ == "__main__":
    sys.exit(main())
