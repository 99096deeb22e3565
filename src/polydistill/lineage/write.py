"""Write a student's lineage beside its weights, once the weights are final:

    write_student_lineage(gate, contributions, student_dir, fingerprints=..., prompts=...,
                          config_sha256=..., accuracy=...)

`lineage.json` (signed, `lineage.record` / `lineage.signing`), `bom.cdx.json` (`lineage.bom`),
`NOTICE` and the model card `README.md` (`lineage.notices`).
"""

import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

from polydistill.lineage.bom import lineage_bom
from polydistill.lineage.notices import model_card_text, notice_text
from polydistill.lineage.policy import Gate
from polydistill.lineage.record import lineage_record, write_lineage
from polydistill.lineage.signing import load_signing_key, sign

BOM_FILE = "bom.cdx.json"
NOTICE_FILE = "NOTICE"
CARD_FILE = "README.md"


def code_version() -> dict[str, str]:
    """polydistill's version, and the git commit of its source when it runs from a checkout."""
    code = {"polydistill": version("polydistill")}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return code
    if commit.returncode == 0:
        code["git_commit"] = commit.stdout.strip()
    return code


def write_student_lineage(
    gate: Gate,
    contributions: dict,
    student_dir: Path,
    *,
    fingerprints: dict[str, dict],
    prompts: dict[str, Any],
    config_sha256: str,
    accuracy: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Sign and write the lineage, its ML-BOM, NOTICE and model card into `student_dir`."""
    record = lineage_record(
        gate,
        contributions,
        student_dir,
        fingerprints=fingerprints,
        prompts=prompts,
        config_sha256=config_sha256,
        code=code_version(),
    )
    key, kept = load_signing_key()
    write_lineage(sign(record, key, kept), student_dir)
    (student_dir / BOM_FILE).write_text(lineage_bom(record, accuracy) + "\n")
    (student_dir / NOTICE_FILE).write_text(notice_text(record))
    (student_dir / CARD_FILE).write_text(model_card_text(record, accuracy))
    return record
