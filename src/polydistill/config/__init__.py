"""Typed run configuration: one YAML file per run, `key=value` overrides, unknown keys rejected.

    cfg = load_config("examples/specialists.yaml", ["teachers[0].train.steps=300"])

Every mistake becomes a `UserError` whose one line names the key path, e.g.
`teachers[1].path: no such directory: /models/qwen`. Values are strictly typed: a number is
never taken from `true`, a boolean never from `1`, a count never from `"3"` (`overrides` reads
the YAML, this module checks it).

One module per section, each field documented where it is declared (the README's configuration
reference is generated from those docstrings by `config.documentation`): `world` (`world:`, and
`data: {source: world}`), `teacher` (`teachers:`), `served`, `training` (sizes and training of
any model), `distributed`, `student`, `student_init`, `on_policy`; `fields` holds what they are
made of. This module holds the run as a whole: `RunConfig`, `eval:`, `benchmark:`,
`load_config`.
"""

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from polydistill.config.distributed import DistributedConfig
from polydistill.config.fields import Domain, Family, LaxPath, Positive, Strict, error_at
from polydistill.config.on_policy import OnPolicyConfig
from polydistill.config.served import ServedConfig
from polydistill.config.student import (
    CurriculumConfig,
    FusionConfig,
    FusionStrategy,
    StudentConfig,
    check_student,
)
from polydistill.config.student_init import StudentInit
from polydistill.config.teacher import TeacherConfig, TeacherLicence
from polydistill.config.training import ModelSize, StudentTrainConfig, TrainConfig
from polydistill.config.world import (
    ArithmeticConfig,
    DomainsConfig,
    FactsConfig,
    StringsConfig,
    VocabSizes,
    WorldConfig,
    WorldData,
)
from polydistill.data import DataConfig
from polydistill.errors import UserError
from polydistill.overrides import apply_override, key_path, read_yaml

__all__ = [
    "ArithmeticConfig",
    "BenchmarkConfig",
    "CurriculumConfig",
    "DataConfig",
    "DistributedConfig",
    "Domain",
    "DomainsConfig",
    "EvalConfig",
    "FactsConfig",
    "Family",
    "FusionConfig",
    "FusionStrategy",
    "LaxPath",
    "ModelSize",
    "OnPolicyConfig",
    "Positive",
    "RunConfig",
    "ServedConfig",
    "Strict",
    "StringsConfig",
    "StudentConfig",
    "StudentInit",
    "StudentTrainConfig",
    "TeacherConfig",
    "TeacherLicence",
    "TrainConfig",
    "VocabSizes",
    "WorldConfig",
    "WorldData",
    "load_config",
]


class EvalConfig(Strict):
    """How every model of the run is scored on the held-out (test) prompts."""

    heldout_limit: Positive | None = None
    """Test prompts scored per tag, at most; unset: all."""
    batch_size: Positive = 128
    """Prompts answered together."""
    max_new_tokens: Positive = 24
    """Longest answer generated, in tokens."""
    graders: LaxPath | None = None
    """A graders file (as `polydistill eval --graders` takes: a grader per tag, a default) that
    grades every model's held-out answers; checked before anything is built. Unset: exact match
    after stripping."""
    lm_eval_tasks: list[LaxPath] = Field(default_factory=list)
    """lm-evaluation-harness task YAMLs (local data, offline) run on the trained student; their
    metrics go to `metrics.json` under the student's `lm_eval`."""


Baseline = Literal[
    "single",
    "uniform",
    "seqkd",
    "oracle",
    "evidence",
    "product",
    "fixed",
    "confidence",
    "route",
    "mince",
    "avgce",
    "leave_one_out",
]


class BenchmarkConfig(Strict):
    """Baselines trained beside the student on the same prompts and token budget."""

    baselines: list[Baseline] = Field(default_factory=list)
    """`single` (each teacher alone), `uniform`, `seqkd` (fine-tuning on the chosen answers, no
    logits), `oracle` (fine-tuning on the gold answers), `leave_one_out` (the student's own
    recipe without each teacher in turn, from readings as if that teacher had never been asked:
    what each teacher is worth, in the report's table), or any other fusion strategy by name."""
    keep_models: bool = False
    """Also write each baseline's trained weights, a standard checkpoint like `student/`, to
    `models/<baseline>/` (`models/seqkd`, `models/oracle`, `models/single-<teacher>`, ...), to
    measure them outside the run (`benchmarks/real_gemma.py` does)."""


def _data_kind(value: Any) -> str:
    """Which `data:` a mapping is: the world's (it names `source`) or the user's files."""
    if isinstance(value, WorldData) or (isinstance(value, dict) and "source" in value):
        return "data-world"
    return "data-files"


DataChoice = Annotated[
    Annotated[WorldData, Tag("data-world")] | Annotated[DataConfig, Tag("data-files")],
    Discriminator(_data_kind),
]


class RunConfig(Strict):
    """One run: its world, prompts, teachers, student, evaluation and baselines."""

    world: WorldConfig = WorldConfig()
    """The specialists world, built (and cached) only when a teacher, the student or the
    prompts come from it."""
    data: DataChoice = WorldData(source="world")
    """The prompts: `{source: world}` (the world's examples, tag = domain, held-out = test) or
    the user's prompt files (`train`, `validation`, `test`, ...)."""
    teachers: Annotated[list[TeacherConfig], Field(min_length=1)]
    """The teachers: world teachers, local checkpoints or served models."""
    eval: EvalConfig = EvalConfig()
    """How every model is scored."""
    threads: Positive | None = None
    """Cores to use (unset: all): torch threads of this process (evaluation, teacher
    readings); world teachers train up to two threads per core at once, and the student and
    baselines `min(models, cores // student.train.threads)` at a time."""
    student: StudentConfig | None = None
    """The student; unset: the run builds the world and scores its teachers only."""
    policy: LaxPath | None = None
    """A policy file (`polydistill.lineage.policy`): which teachers the student may learn from,
    checked before any teacher is loaded, called or read from a store."""
    benchmark: BenchmarkConfig | None = None
    """Baselines trained beside the student."""

    @field_validator("student")
    @classmethod
    def _student_has_its_teachers(
        cls, student: StudentConfig | None, info: ValidationInfo
    ) -> StudentConfig | None:
        """The named teachers exist; fusion settings name them; with the world as `data`, tags
        default to their domains."""
        if student is None or "teachers" not in info.data:
            return student
        teachers = {t.name: t for t in info.data["teachers"]}
        for i, name in enumerate(student.teachers):
            if name not in teachers:
                known = ", ".join(teachers)
                raise error_at(("teachers", i), f"no teacher named {name!r} (teachers: {known})")
        if len(set(student.teachers)) != len(student.teachers):
            raise error_at(("teachers",), f"a teacher is listed twice: {student.teachers}")
        world_data = isinstance(info.data.get("data"), WorldData)
        if student.tags is None and world_data:
            domains = sorted({d for n in student.teachers for d in teachers[n].domains})
            if not domains:
                raise error_at(
                    ("tags",),
                    "the student's teachers have no domains; list the tags whose prompts "
                    "the student sees",
                )
            student = student.model_copy(update={"tags": domains})
        for field in ("prompts_per_tag", "prompt_loss_weight"):
            per_tag = getattr(student, field)
            if student.tags and isinstance(per_tag, dict) and set(per_tag) - set(student.tags):
                unknown = sorted(set(per_tag) - set(student.tags))
                raise error_at((field,), f"{unknown} not among the student's tags {student.tags}")
        if student.validate_every and student.store is not None:
            raise error_at(
                ("validate_every",),
                "a store (student.store) holds the teachers' readings of the training prompts "
                "only, not of the validation prompts; set validate_every: 0",
            )
        check_student(student)
        return student

    @model_validator(mode="after")
    def _benchmark_has_what_it_needs(self) -> "RunConfig":
        if self.benchmark is None or not self.benchmark.baselines:
            return self
        if self.student is None:
            raise ValueError("benchmark: baselines are trained beside a student; add student:")
        fusion = self.student.fusion
        if "route" in self.benchmark.baselines and fusion.routes is None:
            raise ValueError("benchmark.baselines: route needs student.fusion.routes")
        if "fixed" in self.benchmark.baselines and fusion.weights is None:
            raise ValueError("benchmark.baselines: fixed needs student.fusion.weights")
        if "leave_one_out" in self.benchmark.baselines:
            if len(self.student.teachers) < 2:
                raise ValueError("benchmark.baselines: leave_one_out needs two or more teachers")
            if fusion.strategy in ("fixed", "route"):
                raise ValueError(
                    f"benchmark.baselines: leave_one_out needs a strategy that does not name "
                    f"teachers (student.fusion.strategy is {fusion.strategy})"
                )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> "RunConfig":
        names = [t.name for t in self.teachers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"teacher names must be unique; repeated: {', '.join(duplicates)}")
        return self


# What pydantic adds to an error's location besides keys: validator and union branch tags.
_SCHEMA_TAG = re.compile(
    r"^(function-.*|(constrained-)?(int|float|str|bool)|(dict|list)\[.*|data-world|data-files)$"
)


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = tuple(p for p in first["loc"] if not _SCHEMA_TAG.match(str(p)))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{key_path(location)}: {message}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run configuration."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config: no such file: {path}")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"config {path}: not UTF-8 text ({error.reason})") from None
    except yaml.YAMLError as error:
        raise UserError(f"config {path}: malformed YAML: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config {path}: expected a mapping at the top level")
    for override in overrides or []:
        apply_override(raw, override)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise UserError(_first_error(error)) from None
