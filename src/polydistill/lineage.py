"""A distilled model's lineage: which teachers, of which families, went into it, and how much.

`polydistill run` writes it beside the student's weights, `student/lineage.json`, so that it
travels with the checkpoint; `polydistill serve` shows it on `/v1/models` (`serve.lineage`).
This module is the one place that defines, writes and reads it. Schema, version 1::

    {
      "format": "polydistill.lineage/1",
      "student": "student",                       # the distilled model's name
      "strategy": "evidence",                     # how the teachers' targets were fused
      "teachers": [                               # at least one
        {"name": "gemma", "family": "gemma", "share": 0.41},
        {"name": "gptoss", "family": "gpt-oss", "share": 0.33},
        {"name": "qwen", "family": "qwen", "share": 0.26}
      ]
    }

`share` (0..1) is the teacher's part of the fused target mass over all the student's training
positions (the run's fusion accounting, `contributions.json`, keeps it per domain and overall).
Only `teachers` with `name` and `family` is required of a file written by hand; unknown fields
are ignored, so a later version can add detail, and a `format` other than version 1 is refused.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polydistill.errors import UserError
from polydistill.staging import write_json

FORMAT = "polydistill.lineage/1"
LINEAGE_FILE = "lineage.json"


class TeacherContribution(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)
    family: str = Field(min_length=1)
    share: float | None = Field(default=None, ge=0.0, le=1.0)


class Lineage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: Literal["polydistill.lineage/1"] = FORMAT
    student: str | None = None
    strategy: str | None = None
    teachers: list[TeacherContribution] = Field(min_length=1)


def lineage_of_run(student: str, families: Mapping[str, str], accounts: dict) -> Lineage:
    """The lineage of a student from its run's fusion accounting (`contributions.json`:
    `teachers`, `strategy`, `share`) and each teacher's family."""
    shares = accounts.get("share", {})
    return Lineage(
        student=student,
        strategy=accounts["strategy"],
        teachers=[
            TeacherContribution(name=name, family=families[name], share=shares.get(name))
            for name in accounts["teachers"]
        ],
    )


def write_lineage(model_dir: Path, lineage: Lineage) -> Path:
    """Write `model_dir/lineage.json` atomically; returns its path."""
    path = model_dir / LINEAGE_FILE
    write_json(path, lineage.model_dump(mode="json"))
    return path


def read_lineage(path: Path) -> Lineage:
    """Read and check a lineage file; a malformed one is a `UserError` naming it."""
    try:
        return Lineage.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"lineage file {path} is not readable JSON: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "file"
        if first["loc"] == ("format",):
            message = f"{first['input']!r} is not {FORMAT!r}, the version this polydistill reads"
        else:
            message = first["msg"]
        raise UserError(f"lineage file {path}: {where}: {message}") from None
