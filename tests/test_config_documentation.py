"""The configuration reference: every field of the run config is documented where it is
declared, and the README's table is the one generated from those docstrings."""

from pathlib import Path

import pytest
from pydantic import Field

from polydistill.config import RunConfig, Strict
from polydistill.config.documentation import END, START, Undocumented, main, replaced, rows, table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_config_field_is_documented_where_it_is_declared() -> None:
    keys = [key for key, _, meaning in rows(RunConfig) if meaning]
    # the sections below the top level are walked: a nested field and a list's items
    assert "student.on_policy.buffer_steps" in keys
    assert "teachers[].served.urls" in keys
    assert "data.columns.tag" in keys and "data.source" in keys


def test_the_readme_table_is_the_generated_one() -> None:
    text = README.read_text(encoding="utf-8")
    inside = text.split(START)[1].split(END)[0]
    assert inside == "\n" + table(), (
        "README.md's configuration reference is stale: "
        "python -m polydistill.config.documentation --write README.md"
    )


class Inner(Strict):
    documented: int = 1
    """Has a docstring."""
    bare: int = 2


class Outer(Strict):
    items: list[Inner] = Field(default_factory=list)
    """A list of sections."""
    loose: str | None = None


def test_an_undocumented_field_is_named_with_its_whole_key() -> None:
    with pytest.raises(Undocumented) as error:
        list(rows(Outer))
    assert error.value.args[0] == ["items[].bare", "loose"]


def test_the_command_refuses_undocumented_fields(monkeypatch, capsys) -> None:
    import polydistill.config.documentation as documentation

    monkeypatch.setattr(documentation, "table", lambda: table(Outer))
    assert main([]) == 2
    assert "undocumented config fields: items[].bare, loose" in capsys.readouterr().err


def test_the_markers_are_replaced_and_nothing_else() -> None:
    document = f"before\n{START}\nold table\n{END}\nafter\n"
    assert replaced(document, "| new |\n") == f"before\n{START}\n| new |\n{END}\nafter\n"
    with pytest.raises(ValueError, match="exactly one"):
        replaced("no markers", "x")
