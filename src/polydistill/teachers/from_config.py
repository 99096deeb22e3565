"""A configured teacher (`teachers[i]` of a run config) as a `Teacher`: a checkpoint in this
process (`path`, or a world teacher's trained weights) or a model on servers (`served`).

    teacher = teacher_from_config(config, batch_size=64, checkpoint=world.teachers.get(name))
    expected = teacher_fingerprint(config, checkpoint=world.teachers.get(name))  # a store's

A served teacher's API key is read from the environment variable `served.api_key_env` names (or
`POLYDISTILL_TEACHER_<NAME>_API_KEY`): never from the config, and never written anywhere.
"""

import os
from pathlib import Path

from polydistill.config import TeacherConfig
from polydistill.errors import UserError
from polydistill.teachers.checkpoint import DTYPES
from polydistill.teachers.local import local_fingerprint, local_teacher
from polydistill.teachers.protocol import Teacher
from polydistill.teachers.served import ServedTeacher, served_teacher


def teacher_from_config(
    teacher: TeacherConfig, *, batch_size: int, checkpoint: Path | None = None
) -> Teacher:
    """The teacher `teacher` configures; `checkpoint`: where a world teacher's weights are
    (`World.teachers[name]`), unused by the other kinds. `batch_size`: rows per forward pass
    of a local teacher (a served one sends `served.batch_size` rows per request)."""
    if teacher.kind == "served":
        return served_from_config(teacher)
    path = teacher.path or checkpoint
    if path is None:
        raise ValueError(f"world teacher {teacher.name!r}: no checkpoint given")
    return local_teacher(teacher.name, path, batch_size, DTYPES[teacher.dtype], teacher.template)


def served_from_config(teacher: TeacherConfig) -> ServedTeacher:
    """A `served` teacher, its servers checked (model id, tokenizer) before it is returned."""
    served = teacher.served
    if served is None:
        raise ValueError(f"teacher {teacher.name!r} is not served")
    return served_teacher(
        teacher.name,
        served.tokenizer,
        base_url=served.urls,
        model=served.model,
        api_key=api_key(teacher),
        timeout_s=served.timeout_s,
        retries=served.retries,
        backoff_s=served.backoff_s,
        concurrency=served.concurrency,
        batch_size=served.batch_size,
        template=teacher.template,
    )


def api_key(teacher: TeacherConfig) -> str | None:
    """The key in the variable `served.api_key_env` names (which must then be set), else None:
    `served_teacher` falls back on `POLYDISTILL_TEACHER_<NAME>_API_KEY`."""
    variable = teacher.served.api_key_env if teacher.served else None
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise UserError(
            f"teacher {teacher.name!r}: teachers[].served.api_key_env names {variable}, "
            "which is not set in the environment"
        )
    return key


def teacher_fingerprint(teacher: TeacherConfig, *, checkpoint: Path | None = None) -> dict:
    """What the teacher's `fingerprint()` says: of a local one read from its files without loading
    the weights; of a served one asked of its servers (model id, revision, tokenizer hashes)."""
    if teacher.kind == "served":
        opened = served_from_config(teacher)
        try:
            return opened.fingerprint()
        finally:
            opened.close()
    path = teacher.path or checkpoint
    if path is None:
        raise ValueError(f"world teacher {teacher.name!r}: no checkpoint given")
    return local_fingerprint(path, f"teacher {teacher.name!r}", teacher.template)
