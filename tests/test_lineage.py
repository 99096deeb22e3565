"""The lineage file: derived from a run's fusion accounting, written atomically, read back, and
every malformed file (bad JSON, missing fields, another format version) one line naming it."""

import json

import pytest

from polydistill.errors import UserError
from polydistill.lineage import FORMAT, lineage_of_run, read_lineage, write_lineage

ACCOUNTS = {
    "teachers": ["gemma", "gptoss", "qwen"],
    "strategy": "evidence",
    "share": {"gemma": 0.5, "gptoss": 0.3, "qwen": 0.2},
    "mass": {"facts": {"gemma": 0.1, "gptoss": 0.1, "qwen": 0.8}},
    "examples": [],
}
FAMILIES = {"gemma": "gemma", "gptoss": "gpt-oss", "qwen": "qwen", "unused": "qwen"}


def test_a_runs_lineage_comes_from_its_accounting_and_round_trips(tmp_path):
    lineage = lineage_of_run("student", FAMILIES, ACCOUNTS)
    path = write_lineage(tmp_path, lineage)
    assert path == tmp_path / "lineage.json"
    assert json.loads(path.read_text()) == {
        "format": FORMAT,
        "student": "student",
        "strategy": "evidence",
        "teachers": [
            {"name": "gemma", "family": "gemma", "share": 0.5},
            {"name": "gptoss", "family": "gpt-oss", "share": 0.3},
            {"name": "qwen", "family": "qwen", "share": 0.2},
        ],
    }
    assert read_lineage(path) == lineage
    assert [p.name for p in tmp_path.iterdir()] == ["lineage.json"]  # no temporary left


def test_accounting_without_overall_shares_gives_a_lineage_without_shares():
    older = {k: v for k, v in ACCOUNTS.items() if k != "share"}
    lineage = lineage_of_run("student", FAMILIES, older)
    assert [t.share for t in lineage.teachers] == [None, None, None]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "is not readable JSON"),
        ("\udcff", "is not readable JSON"),
        ("[]", ": file: Input should be a valid dictionary"),
        ('{"teachers": []}', ": teachers: List should have at least 1 item"),
        ('{"teachers": [{"name": "g"}]}', ": teachers.0.family: Field required"),
        ('{"teachers": [{"name": "g", "family": "gemma", "share": 2}]}', "teachers.0.share"),
        (
            '{"format": "polydistill.lineage/2", "teachers": [{"name": "g", "family": "gemma"}]}',
            ": format: 'polydistill.lineage/2' is not 'polydistill.lineage/1', the version",
        ),
    ],
)
def test_a_malformed_lineage_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "lineage.json"
    path.write_text(content, errors="surrogateescape")
    with pytest.raises(UserError) as error:
        read_lineage(path)
    text = str(error.value)
    assert text.startswith(f"lineage file {path}") and message in text and "\n" not in text


def test_a_hand_written_lineage_needs_only_names_and_families(tmp_path):
    path = tmp_path / "lineage.json"
    path.write_text('{"teachers": [{"name": "g", "family": "gemma"}], "later": {"sbom": 1}}')
    lineage = read_lineage(path)
    assert (
        lineage.format == FORMAT and lineage.student is None and lineage.teachers[0].share is None
    )
