"""lineage.schema: a lineage file of either format reads back, and every malformed file (bad
JSON, missing fields, another format version) is one line naming it."""

import json

import pytest

from polydistill.errors import UserError
from polydistill.lineage.schema import FORMAT, FORMATS, read_lineage


def test_both_formats_read(tmp_path):
    path = tmp_path / "lineage.json"
    for version in FORMATS:
        record = {
            "format": version,
            "student": "student",
            "strategy": "evidence",
            "teachers": [{"name": "g", "family": "gemma", "share": 0.5, "origin": "US"}],
            "signature": {"algorithm": "ed25519"},
        }
        path.write_text(json.dumps(record))
        lineage = read_lineage(path)
        assert lineage.format == version and lineage.teachers[0].share == 0.5
        assert lineage.strategy == "evidence"


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
            '{"format": "polydistill.lineage/3", "teachers": [{"name": "g", "family": "gemma"}]}',
            ": format: 'polydistill.lineage/3' is not one of",
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
