"""lineage.facts: where a teacher's licence, publisher and origin are read from."""

import json
from pathlib import Path

import pytest

from polydistill.config import TeacherConfig
from polydistill.errors import UserError
from polydistill.lineage.facts import checkpoint_licences, teacher_facts
from polydistill.lineage.licences import GEMMA_NOTICE, LICENCES, licences_in_text

APACHE = "Apache License\nVersion 2.0, January 2004\nhttp://www.apache.org/licenses/"
GEMMA = "Gemma Terms of Use\n\nLast modified: March 24, 2025\n..."


def checkpoint(root: Path, card: str | None = None, **files: str) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    if card is not None:
        (root / "README.md").write_text(f"---\n{card}\n---\n# A model\n")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def real(path: Path, family: str = "qwen", **licence) -> TeacherConfig:
    return TeacherConfig(name="t", family=family, path=path, licence=licence or None)


def world(family: str) -> TeacherConfig:
    return TeacherConfig(name=family, family=family, domains=["facts"])


def test_world_teachers_carry_their_familys_facts():
    gemma, qwen, gptoss = (teacher_facts(world(f)) for f in ("gemma", "qwen", "gpt-oss"))
    assert (gemma.publisher, gemma.origin, gemma.licence.id) == ("Google LLC", "US", "gemma")
    assert gemma.licence.notice == GEMMA_NOTICE
    assert gemma.licence.obligations == ["notice", "use_restrictions"]
    assert (qwen.publisher, qwen.origin, qwen.licence.id) == ("Alibaba Cloud", "CN", "apache-2.0")
    assert (gptoss.origin, gptoss.licence.id, gptoss.licence.obligations) == (
        "US",
        "apache-2.0",
        [],
    )
    assert gemma.licence_source == "world stand-in for gemma"


def test_the_model_cards_licence(tmp_path):
    facts = teacher_facts(real(checkpoint(tmp_path / "m", "license: apache-2.0\ntags: [x]")))
    assert (facts.licence.id, facts.licence_source) == ("apache-2.0", "README.md")
    other = checkpoint(tmp_path / "o", "license: other\nlicense_name: tongyi-qianwen")
    assert teacher_facts(real(other)).licence.id == "qwen"


def test_a_license_file_names_its_licence(tmp_path):
    facts = teacher_facts(real(checkpoint(tmp_path / "m", LICENSE=GEMMA), family="gemma"))
    assert (facts.licence.id, facts.licence_source) == ("gemma", "LICENSE")
    assert licences_in_text(APACHE) == {"apache-2.0"}
    assert licences_in_text("Apache License, but no version") == set()
    assert licences_in_text("Qwen RESEARCH LICENSE AGREEMENT\n...") == {"qwen-research"}
    assert checkpoint_licences(checkpoint(tmp_path / "n", NOTICE=APACHE)) == {
        "NOTICE": "apache-2.0"
    }


def test_two_licences_in_a_checkpoint_are_refused(tmp_path):
    path = checkpoint(tmp_path / "m", "license: apache-2.0", LICENSE=GEMMA)
    with pytest.raises(UserError, match=r"names two licences \(README.md says apache-2.0, "
                       r"LICENSE says gemma\); declare one"):  # fmt: skip
        teacher_facts(real(path))
    both = checkpoint(tmp_path / "b", LICENSE=APACHE + "\n" + GEMMA)
    with pytest.raises(UserError, match=r"LICENSE names two licences: apache-2.0, gemma"):
        teacher_facts(real(both))
    # the config's declaration settles it
    assert teacher_facts(real(path, id="gemma")).licence_source == "config"


def test_an_undetermined_licence_is_refused_unless_declared(tmp_path):
    bare = checkpoint(tmp_path / "bare")
    with pytest.raises(UserError, match=r"cannot determine the licence of .*bare; declare it"):
        teacher_facts(real(bare))
    odd = checkpoint(tmp_path / "odd", "license: other\nlicense_name: acme-model-licence")
    with pytest.raises(UserError, match=r"mentions one not in the table: README.md"):
        teacher_facts(real(odd))
    facts = teacher_facts(real(bare, id="llama3.1", origin="FR", publisher="Someone"))
    assert (facts.licence.naming, facts.origin, facts.publisher) == (
        LICENCES["llama3.1"].naming,
        "FR",
        "Someone",
    )


def test_a_new_licence_must_be_described(tmp_path):
    bare = checkpoint(tmp_path / "bare")
    with pytest.raises(
        UserError, match=r"licence 'acme-1' is not a known one .* \(url, commercial\)"
    ):
        teacher_facts(real(bare, id="acme-1"))
    facts = teacher_facts(
        real(
            bare,
            id="acme-1",
            url="https://acme.example/l",
            commercial=False,
            notice="Built on Acme",
        )
    )
    assert (facts.licence.commercial, facts.licence.obligations) == (False, ["notice"])


def test_a_bad_front_matter_is_one_line(tmp_path):
    path = checkpoint(tmp_path / "m", "license: [unclosed")
    with pytest.raises(UserError, match=r"README.md: front matter is not valid YAML"):
        teacher_facts(real(path))
