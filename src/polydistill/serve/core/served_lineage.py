"""A served model's lineage: verified at start, shown by `/v1/models`, its notices served and
recorded with every request it answers.

    lineage = load_served_lineage(model_dir)   # None: no lineage file; UserError: refused

The lineage file (`polydistill.lineage`: schema, writer and reader) is `lineage.json` in the
model directory, where `polydistill run` writes it for its student, or else in the directory
that holds the model. A run's `contributions.json` is its fusion accounting, not a lineage, and
is never read here. No lineage file: no lineage shown; a malformed one stops `serve` with a
message naming it. A signed lineage (format 2, what runs write) is verified at start
(`lineage.signing.verify_lineage`): a model whose weights are not the ones its lineage signs,
or whose record was changed, is refused rather than served. Only a signed lineage carries the
teachers' facts (origin, publisher, licence) that key policies are checked against
(`core.access`) and the licences' duties (`notices`).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polydistill.errors import UserError
from polydistill.lineage.notices import notice_text
from polydistill.lineage.schema import LINEAGE_FILE, Lineage, read_lineage
from polydistill.lineage.signing import verify_lineage

SIGNED = "polydistill.lineage/2"
_DUTIES = ("notice", "naming", "use_restrictions", "commercial_limit")


@dataclass(frozen=True)
class ServedLineage:
    """What the gateway keeps of a model's lineage."""

    summary: dict[str, Any]  # what `/v1/models` shows
    teachers: list[dict[str, Any]] | None = None  # each teacher's facts; signed lineages only
    notices: tuple[dict[str, Any], ...] = ()  # what each teacher's licence asks of its users
    notice_text: str | None = None  # the NOTICE, as `/v1/models/{id}/notices` serves it

    @property
    def notice_ids(self) -> tuple[str, ...]:
        """The licences whose duties apply to this model's answers (recorded per usage row)."""
        return tuple(sorted({notice["licence"] for notice in self.notices}))


def find_lineage_file(model_dir: Path) -> Path | None:
    """`lineage.json` in the model directory, else in its parent (a run folder)."""
    for directory in (model_dir, model_dir.parent):
        if (directory / LINEAGE_FILE).is_file():
            return directory / LINEAGE_FILE
    return None


def _verified(model_dir: Path) -> tuple[Lineage, dict[str, Any] | None] | None:
    """The lineage of the model in `model_dir` and, if signed, its verified record."""
    path = find_lineage_file(model_dir)
    if path is None:
        return None
    lineage = read_lineage(path)
    if lineage.format != SIGNED:
        return lineage, None
    if path.parent != model_dir:
        raise UserError(f"signed lineage {path} is not beside the weights it signs ({model_dir})")
    return lineage, verify_lineage(model_dir)


def load_lineage(model_dir: Path) -> Lineage | None:
    """The lineage of the model in `model_dir`, verified if signed; a mismatch is refused."""
    found = _verified(model_dir)
    return found[0] if found else None


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


def licence_notices(teachers: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Per teacher whose licence asks anything of the model's users: the licence and its
    notice, naming rule, use restrictions and commercial limit."""
    notices = []
    for teacher in teachers:
        licence = teacher["licence"]
        duties = {duty: licence.get(duty) for duty in _DUTIES}
        if any(duties.values()):
            notices.append(
                {"teacher": teacher["name"], "licence": licence["id"], "url": licence["url"]}
                | duties
            )
    return tuple(notices)


def load_served_lineage(model_dir: Path) -> ServedLineage | None:
    """The verified lineage of the model in `model_dir` as the gateway keeps it."""
    found = _verified(model_dir)
    if found is None:
        return None
    lineage, record = found
    summary = lineage_summary(lineage)
    if record is None:
        return ServedLineage(summary)
    teachers = record["teachers"]
    return ServedLineage(summary, teachers, licence_notices(teachers), notice_text(record))
