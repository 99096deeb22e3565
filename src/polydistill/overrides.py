"""Reading run configurations: YAML text and `key=value` overrides, each mistake one line.

    raw = read_yaml(text)                        # a config file or an override's value
    apply_override(raw, "teachers[0].train.steps=500")

A key is names joined by dots, each optionally followed by list indices: `a.b[0].c`. An
override's value is read as YAML (`[x, y]`, `{facts: 4000}`, `1e-3`, `null`); an empty value is
`null`. Anything malformed (no `=`, an empty key part, a bad index, an index or a name where the
config has none, a value that is not YAML) raises `UserError` naming the override; whether the
key exists and the value has the right type is the config model's to say (`config.RunConfig`).

YAML here is YAML 1.1 (PyYAML) but for one thing: numbers in exponent notation without a dot
or a signed exponent (`1e-3`, `5e4`) are numbers, as in YAML 1.2, not strings.
"""

import re
from typing import Any

import yaml

from polydistill.errors import UserError

_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_INDEX = re.compile(r"[0-9]+", re.ASCII)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's exponent floats."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def read_yaml(text: str) -> Any:
    """Parse YAML text; raises `yaml.YAMLError` when it is malformed."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects


def key_path(location: tuple) -> str:
    """`("teachers", 0, "train")` -> `teachers[0].train`."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "config"


def split_key(key: str) -> list[str | int]:
    """`a.b[0].c` -> `["a", "b", 0, "c"]`; raises `ValueError` naming what is malformed."""
    parts: list[str | int] = []
    for segment in key.split("."):
        name, *indices = segment.split("[")
        if not name.strip():
            raise ValueError("empty key part")
        if "]" in name:
            raise ValueError(f"']' without '[' in {name!r}")
        parts.append(name.strip())
        for index in indices:
            digits, closed, rest = index.partition("]")
            if not closed or rest or not _INDEX.fullmatch(digits):
                raise ValueError(f"bad index {'[' + index!r}; expected [0], [1], ...")
            parts.append(int(digits))
    return parts


def _read_value(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return read_yaml(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"the value is not valid YAML ({problem})") from None


def _enter(node: Any, parts: list[str | int], depth: int) -> None:
    """Check that `node`, the value at `parts[:depth]`, can be entered with `parts[depth]`."""
    part, parent = parts[depth], key_path(tuple(parts[:depth]))
    if isinstance(part, int):
        if not isinstance(node, list):
            raise ValueError(f"{parent} is not a list")
        if part >= len(node):
            raise ValueError(f"{key_path(tuple(parts[: depth + 1]))} does not exist")
    elif isinstance(node, list):
        raise ValueError(f"{parent} is a list; index it, e.g. {parent}[0]")
    elif not isinstance(node, dict):
        raise ValueError(f"{parent} is not a mapping")


def _set(raw: dict, parts: list[str | int], value: Any) -> None:
    node: Any = raw
    for depth, part in enumerate(parts):
        _enter(node, parts, depth)
        if depth == len(parts) - 1:
            node[part] = value
        elif isinstance(part, int):
            node = node[part]
        else:
            if node.get(part) is None:  # absent, or an empty section (`student:`)
                node[part] = {}
            node = node[part]


def apply_override(raw: dict, override: str) -> None:
    """Set `a.b[0].c=value` in the raw mapping; the value is read as YAML. Raises `UserError`
    naming the override when it is malformed."""
    key, sep, text = override.partition("=")
    try:
        if not sep or not key.strip():
            raise ValueError("expected key=value")
        _set(raw, split_key(key.strip()), _read_value(text))
    except ValueError as error:
        raise UserError(f"override {override!r}: {error}") from None
