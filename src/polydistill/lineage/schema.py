"""Reading a distilled model's lineage: which teachers, of which families, went into it, and
how much; what `polydistill serve` shows on `/v1/models` (`serve.core.served_lineage`).

`polydistill run` writes it beside the student's weights, `student/lineage.json`, so that it
travels with the checkpoint: format 2 (`lineage.record`, signed by `lineage.signing`) is
format 1 plus every teacher's facts, fingerprint and measured contribution, the policy, data,
config and code, and the signature. What is read here is what both formats share::

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
are ignored, so a later version can add detail, and a `format` other than versions 1 and 2 is
refused.
"""

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polydistill.errors import UserError

FORMAT = "polydistill.lineage/1"
FORMATS = ("polydistill.lineage/1", "polydistill.lineage/2")
LINEAGE_FILE = "lineage.json"


class TeacherContribution(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)
    family: str = Field(min_length=1)
    share: float | None = Field(default=None, ge=0.0, le=1.0)


class Lineage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: Literal["polydistill.lineage/1", "polydistill.lineage/2"] = FORMAT
    student: str | None = None
    strategy: str | None = None
    teachers: list[TeacherContribution] = Field(min_length=1)


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
            message = f"{first['input']!r} is not one of {FORMATS}, the versions this reads"
        else:
            message = first["msg"]
        raise UserError(f"lineage file {path}: {where}: {message}") from None
