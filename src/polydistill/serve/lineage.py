"""The served model's lineage, as `/v1/models` shows it.

The lineage file (`polydistill.lineage`: schema, writer and reader) is `lineage.json` in the
model directory, where `polydistill run` writes it for its student, or else in the directory
that holds the model. A run's `contributions.json` is its fusion accounting, not a lineage, and
is never read here. No lineage file: no lineage shown; a malformed one stops `serve` with a
message naming it.
"""

from pathlib import Path
from typing import Any

from polydistill.lineage.schema import LINEAGE_FILE, Lineage, read_lineage


def find_lineage_file(model_dir: Path) -> Path | None:
    """`lineage.json` in the model directory, else in its parent (a run folder)."""
    for directory in (model_dir, model_dir.parent):
        if (directory / LINEAGE_FILE).is_file():
            return directory / LINEAGE_FILE
    return None


def load_lineage(model_dir: Path) -> Lineage | None:
    path = find_lineage_file(model_dir)
    return None if path is None else read_lineage(path)


def lineage_summary(lineage: Lineage) -> dict[str, Any]:
    """What `/v1/models` shows for a model with a lineage."""
    return {
        "student": lineage.student,
        "strategy": lineage.strategy,
        "teachers": [t.name for t in lineage.teachers],
        "families": sorted({t.family for t in lineage.teachers}),
        "shares": {t.name: t.share for t in lineage.teachers if t.share is not None},
    }
