"""The model's lineage: which teachers (and model families) were distilled into it.

A run may leave `lineage.json` (or `contributions.json`, same schema) in the model directory
or in the run directory that holds it; `/v1/models` then shows a summary. Schema::

    {
      "format": "polydistill.lineage/1",          # optional
      "student": "student",                        # optional: name of the distilled model
      "teachers": [                                # required, at least one
        {"name": "gemma-tiny", "family": "gemma", "share": 0.5},
        {"name": "qwen-tiny", "family": "qwen", "share": 0.3},
        {"name": "gpt-oss-tiny", "family": "gpt-oss", "share": 0.2}
      ]
    }

`share` (optional, 0..1) is the teacher's part of the distillation signal. Unknown fields are
ignored, so later formats can add detail. The summary lists teachers, families and shares;
a malformed file stops `serve` with a message naming it.
"""

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polydistill.errors import UserError

LINEAGE_FILES = ("lineage.json", "contributions.json")


class TeacherContribution(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)
    family: str = Field(min_length=1)
    share: float | None = Field(default=None, ge=0.0, le=1.0)


class Lineage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: str = "polydistill.lineage/1"
    student: str | None = None
    teachers: list[TeacherContribution] = Field(min_length=1)


def find_lineage_file(model_dir: Path) -> Path | None:
    """The first lineage file in the model directory, then in its parent (the run)."""
    for directory in (model_dir, model_dir.parent):
        for name in LINEAGE_FILES:
            if (directory / name).is_file():
                return directory / name
    return None


def load_lineage(model_dir: Path) -> Lineage | None:
    path = find_lineage_file(model_dir)
    if path is None:
        return None
    try:
        return Lineage.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"lineage file {path} is not valid JSON: {error}") from error
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"lineage file {path}: {where}: {first['msg']}") from error


def lineage_summary(lineage: Lineage) -> dict[str, Any]:
    """What `/v1/models` shows for a model with a lineage."""
    return {
        "student": lineage.student,
        "teachers": [t.name for t in lineage.teachers],
        "families": sorted({t.family for t in lineage.teachers}),
        "shares": {t.name: t.share for t in lineage.teachers if t.share is not None},
    }
