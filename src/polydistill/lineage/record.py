"""The lineage of a distilled student: what went into it, by how much, under which policy.

    record = lineage_record(gate, contributions, student_dir, prompts=..., config=...)

`lineage.json` (format `polydistill.lineage/2`) is written into the student's folder beside its
weights, and signed (`lineage.signing`). It holds:
- `weights`: the sha256 of every weights file, so the record is bound to these weights;
- `teachers`: per teacher its facts (family, publisher, origin, licence and its obligations),
  fingerprint (weights, tokenizer and chat-template hashes) and measured contribution from the
  fusion accounting (`contributions.json`): `share` of the fused target mass over all positions,
  `mass` per tag, `completions` (chosen answers it wrote) per tag, and `tail` (the share of
  its projected mass that fell outside the student's top-k);
- `excluded`: teachers the policy kept out, with the rule, and a contribution of exactly zero;
- `policy`, `data` (the prompt set's hash and count), `config` (its sha256) and `code`.
`serve` shows the teachers, families and shares on `/v1/models` (it reads `name`, `family`,
`share`; later formats only add fields).
"""

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from polydistill.lineage.facts import TeacherFacts
from polydistill.lineage.policy import Gate
from polydistill.lineage.schema import LINEAGE_FILE

FORMAT = "polydistill.lineage/2"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digests(model_dir: Path) -> dict[str, str]:
    """sha256 of every weights file of a checkpoint folder, by file name."""
    files = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    return {path.name: file_sha256(path) for path in files}


def licence_entry(facts: TeacherFacts) -> dict[str, Any]:
    licence = facts.licence
    return {
        "id": licence.id,
        "name": licence.name,
        "url": licence.url,
        "source": facts.licence_source,
        "commercial": licence.commercial,
        "commercial_limit": licence.commercial_limit,
        "notice": licence.notice,
        "naming": licence.naming,
        "use_restrictions": licence.use_restrictions,
        "obligations": licence.obligations,
    }


def contribution(name: str, contributions: dict) -> dict[str, Any]:
    """A teacher's measured part in the student's targets, from the fusion accounting."""
    mass = {tag: shares.get(name, 0.0) for tag, shares in contributions.get("mass", {}).items()}
    written = contributions.get("completions", {})
    return {
        "share": contributions.get("share", {}).get(name, 0.0),
        "mass": mass,
        "completions": {tag: counts.get(name, 0) for tag, counts in written.items()},
        "tail": contributions.get("tail", {}).get(name, 0.0),
    }


def lineage_record(
    gate: Gate,
    contributions: dict,
    student_dir: Path,
    *,
    fingerprints: dict[str, dict],
    prompts: dict[str, Any],
    config_sha256: str,
    code: dict[str, str],
    student: str = "student",
) -> dict[str, Any]:
    """The lineage of the student saved in `student_dir` (unsigned)."""
    taught = contributions.get("teachers", [])
    teachers = [
        {
            "name": name,
            "family": gate.facts[name].family,
            "publisher": gate.facts[name].publisher,
            "origin": gate.facts[name].origin,
            "licence": licence_entry(gate.facts[name]),
            "fingerprint": fingerprints.get(name, {}),
            **contribution(name, contributions),
        }
        for name in taught
    ]
    excluded = [
        {"name": name, "family": gate.facts[name].family, "rule": rule, "share": 0.0}
        for name, rule in gate.excluded.items()
    ]
    policy = gate.policy
    return {
        "format": FORMAT,
        "student": student,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "weights": weights_digests(student_dir),
        "teachers": teachers,
        "excluded": excluded,
        "policy": None
        if policy is None
        else {"name": policy.name, "digest": policy.digest, **policy.model_dump(mode="json")},
        "data": {"prompts": prompts},
        "config": {"sha256": config_sha256},
        "code": code,
        "strategy": contributions.get("strategy"),
    }


def write_lineage(record: dict[str, Any], student_dir: Path) -> Path:
    path = student_dir / LINEAGE_FILE
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
