"""The served model's lineage, as `/v1/models` shows it.

The lineage file (`polydistill.lineage`: schema, writer and reader) is `lineage.json` in the
model directory, where `polydistill run` writes it for its student, or else in the directory
that holds the model. A run's `contributions.json` is its fusion accounting, not a lineage, and
is never read here. No lineage file: no lineage shown; a malformed one stops `serve` with a
message naming it. A signed lineage (format 2, what runs write) is verified at start
(`lineage.signing.verify_lineage`): a model whose weights are not the ones its lineage signs,
or whose record was changed, is refused rather than served.
"""

from pathlib import Path
from typing import Any

from polydistill.errors import UserError
from polydistill.lineage.schema import LINEAGE_FILE, Lineage, read_lineage
from polydistill.lineage.signing import verify_lineage

SIGNED = "polydistill.lineage/2"


def find_lineage_file(model_dir: Path) -> Path | None:
    """`lineage.json` in the model directory, else in its parent (a run folder)."""
    for directory in (model_dir, model_dir.parent):
        if (directory / LINEAGE_FILE).is_file():
            return directory / LINEAGE_FILE
    return None


def load_lineage(model_dir: Path) -> Lineage | None:
    path = find_lineage_file(model_dir)
    if path is None:
        return None
    lineage = read_lineage(path)
    if lineage.format == SIGNED:
        if path.parent != model_dir:
            raise UserError(
                f"signed lineage {path} is not beside the weights it signs ({model_dir})"
            )
        verify_lineage(model_dir)
    return lineage


def lineage_summary(lineage: Lineage) -> dict[str, Any]:
    """What `/v1/models` shows for a model with a lineage."""
    return {
        "student": lineage.student,
        "verified": lineage.format == SIGNED,  # signature and weights checked at start
        "strategy": lineage.strategy,
        "teachers": [t.name for t in lineage.teachers],
        "families": sorted({t.family for t in lineage.teachers}),
        "shares": {t.name: t.share for t in lineage.teachers if t.share is not None},
    }
