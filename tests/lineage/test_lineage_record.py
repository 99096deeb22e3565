"""lineage.record / signing / bom / notices: a student's lineage from the fusion accounting, its
signature bound to the weights, the CycloneDX 1.6 ML-BOM and the NOTICE."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from polydistill.config import load_config
from polydistill.errors import UserError
from polydistill.lineage import bom as bom_module
from polydistill.lineage.bom import lineage_bom
from polydistill.lineage.licences import GEMMA_NOTICE
from polydistill.lineage.policy import Policy, policy_gate
from polydistill.lineage.record import contribution
from polydistill.lineage.signing import verify_lineage, write_keypair
from polydistill.lineage.write import write_student_lineage

TINY = Path(__file__).parent.parent / "tiny.yaml"
# What student.targets.contributions writes, for two teachers over two tags.
CONTRIBUTIONS = {
    "teachers": ["gemma", "gptoss"],
    "mass": {"strings": {"gemma": 0.9, "gptoss": 0.1}, "arithmetic": {"gemma": 0.2, "gptoss": 0.8}},
    "completions": {"strings": {"gemma": 3, "gptoss": 0}, "arithmetic": {"gemma": 0, "gptoss": 1}},
    "tail": {"gemma": 0.01, "gptoss": 0.2},
    "share": {"gemma": 0.725, "gptoss": 0.275},
    "strategy": "evidence",
}


def test_contribution_of_each_teacher_from_the_accounting():
    gemma = contribution("gemma", CONTRIBUTIONS)
    assert gemma["share"] == 0.725 and gemma["mass"] == {"strings": 0.9, "arithmetic": 0.2}
    assert gemma["completions"] == {"strings": 3, "arithmetic": 0} and gemma["tail"] == 0.01
    assert contribution("qwen", CONTRIBUTIONS)["share"] == 0.0


@pytest.fixture
def student_dir(tmp_path) -> Path:
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    (folder / "config.json").write_text("{}")
    return folder


def written(student_dir: Path, monkeypatch, key: Path | None = None) -> dict:
    if key is not None:
        monkeypatch.setenv("POLYDISTILL_LINEAGE_KEY", str(key))
    cfg = load_config(TINY, ["student.teachers=[gemma, gptoss, qwen]"])
    gate = policy_gate(cfg, Policy(name="no-cn", deny={"origin": ["CN"]}, on_violation="exclude"))
    return write_student_lineage(
        gate,
        CONTRIBUTIONS,
        student_dir,
        fingerprints={"gemma": {"weights": "ab" * 32}, "gptoss": {"weights": "cd" * 32}},
        prompts={"count": 4, "sha256": "ef" * 32},
        config_sha256="01" * 32,
        accuracy={"strings": 0.5, "arithmetic": 0.25},
    )


def test_the_written_lineage(student_dir, monkeypatch):
    record = written(student_dir, monkeypatch)
    on_disk = json.loads((student_dir / "lineage.json").read_text())
    assert on_disk == record and record["format"] == "polydistill.lineage/2"
    assert [t["name"] for t in record["teachers"]] == ["gemma", "gptoss"]
    assert record["excluded"] == [
        {"name": "qwen", "family": "qwen", "rule": "deny.origin lists CN (origin of the teacher)",
         "share": 0.0}
    ]  # fmt: skip
    assert record["policy"]["name"] == "no-cn" and record["signature"]["key"] == "ephemeral"
    assert list(record["weights"]) == ["model.safetensors"]
    notice = (student_dir / "NOTICE").read_text()
    assert GEMMA_NOTICE in notice and "prohibited_use_policy" in notice
    card = (student_dir / "README.md").read_text()
    assert card.startswith("---\nbase_model:\n- gemma\n- gptoss\n")
    assert "Excluded by policy: qwen" in card
    assert verify_lineage(student_dir) == record


def test_the_bom_validates_against_cyclonedx_1_6(student_dir, monkeypatch):
    written(student_dir, monkeypatch)
    text = (student_dir / "bom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    subject = bom["metadata"]["component"]
    assert subject["type"] == "machine-learning-model"
    assert [a["name"] for a in subject["pedigree"]["ancestors"]] == ["gemma", "gptoss"]
    gemma = subject["pedigree"]["ancestors"][0]
    assert gemma["licenses"][0]["license"]["name"] == "Gemma Terms of Use"
    assert subject["pedigree"]["ancestors"][1]["licenses"][0]["license"]["id"] == "Apache-2.0"
    assert subject["modelCard"]["modelParameters"]["datasets"] == [{"ref": "data:prompts"}]
    assert [c["type"] for c in bom["components"]] == ["data"]
    # a card the schema refuses is caught, not written
    record = json.loads((student_dir / "lineage.json").read_text())
    broken = {"modelParameters": {"approach": {"type": "guesswork"}}}
    monkeypatch.setattr(bom_module, "model_card", lambda *_: broken)
    with pytest.raises(ValueError, match=r"does not validate against CycloneDX 1\.6"):
        lineage_bom(record)


def test_tampering_is_caught(student_dir, monkeypatch):
    written(student_dir, monkeypatch)
    path = student_dir / "lineage.json"
    original = path.read_text()
    record = json.loads(original)
    record["teachers"][0]["share"] = 0.0  # hide a teacher's part
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match="the signature does not match the record"):
        verify_lineage(student_dir)
    path.write_text(original)
    (student_dir / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(UserError, match=r"not the ones the lineage signs \(model.safetensors\)"):
        verify_lineage(student_dir)


def test_a_pinned_key(student_dir, monkeypatch, tmp_path):
    public = write_keypair(tmp_path / "keys" / "lineage.pem")
    assert (tmp_path / "keys" / "lineage.pem").stat().st_mode & 0o777 == 0o600
    record = written(student_dir, monkeypatch, key=tmp_path / "keys" / "lineage.pem")
    assert record["signature"]["key"] == "kept"
    assert verify_lineage(student_dir, public_key=public) == record
    other = write_keypair(tmp_path / "other.pem")
    with pytest.raises(UserError, match="signed by another key than"):
        verify_lineage(student_dir, public_key=other)
    with pytest.raises(UserError, match="exists; not overwriting a key"):
        write_keypair(tmp_path / "other.pem")


def test_lineage_verify_command(student_dir, monkeypatch):
    written(student_dir, monkeypatch)
    ok = subprocess.run(
        [sys.executable, "-m", "polydistill", "lineage", "verify", str(student_dir)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0].startswith(
        f"{student_dir}: signature valid (ephemeral key, not pinned"
    )
    (student_dir / "model.safetensors").write_bytes(b"swapped")
    bad = subprocess.run(
        [sys.executable, "-m", "polydistill", "lineage", "verify", str(student_dir.parent)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: {student_dir}: the weights are not the ones the lineage signs (model.safetensors)"
    ]


def test_lineage_keygen_command(tmp_path):
    out = tmp_path / "lineage.pem"
    result = subprocess.run(
        [sys.executable, "-m", "polydistill", "lineage", "keygen", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out} (keep it secret) and {out}.pub.pem"
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    again = subprocess.run(
        [sys.executable, "-m", "polydistill", "lineage", "keygen", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: {out} exists; not overwriting a key"


def test_the_gateway_refuses_weights_its_lineage_does_not_sign(student_dir, monkeypatch):
    from polydistill.serve.core.served_lineage import lineage_summary, load_lineage

    written(student_dir, monkeypatch)
    summary = lineage_summary(load_lineage(student_dir))
    assert summary["verified"] and summary["teachers"] == ["gemma", "gptoss"]
    (student_dir / "model.safetensors").write_bytes(b"swapped weights")
    with pytest.raises(UserError, match="the weights are not the ones the lineage signs"):
        load_lineage(student_dir)
