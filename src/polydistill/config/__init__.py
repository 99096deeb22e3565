"""Typed run configuration: one YAML file per run, `key=value` overrides, unknown keys rejected.

    cfg = load_config("examples/specialists.yaml", ["teachers[0].train.steps=300"])

Every mistake becomes a `UserError` whose one line names the key path, e.g.
`teachers[1].path: no such directory: /models/qwen`. Values are strictly typed: a number is
never taken from `true`, a boolean never from `1`, a count never from `"3"` (`overrides` reads
the YAML, this module checks it).
"""

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from polydistill.config.distributed import DistributedConfig
from polydistill.config.on_policy import OnPolicyConfig
from polydistill.config.served import ServedConfig
from polydistill.config.student_init import StudentInit
from polydistill.data import DataConfig
from polydistill.errors import UserError
from polydistill.overrides import apply_override, key_path, read_yaml

Family = Literal["gemma", "qwen", "gpt-oss"]
# The domains a world teacher trains on (the specialists world's); the student's prompts are
# tagged records of any source, and its settings name free-form tags.
Domain = Literal["arithmetic", "facts", "strings"]
TagName = Annotated[str, Field(min_length=1)]
TokenizerStyle = Literal["gemma", "qwen", "gpt-oss", "student"]
LossKind = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "tv"]
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


# A path is the one value YAML cannot spell as its own type.
LaxPath = Annotated[Path, Field(strict=False)]


class Strict(BaseModel):
    """Every config section: unknown keys are errors, and values are taken as their own YAML
    types only (strict), so that `true` is never a number, nor `1` a boolean, nor `"3"` a count.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class ArithmeticConfig(Strict):
    train: Positive = 20000
    heldout: Positive = 200
    validation: Positive = 200
    max_digits: Annotated[int, Field(ge=1, le=6)] = 3
    min_digits: Annotated[int, Field(ge=1, le=6)] = 1
    max_digits_second: Annotated[int, Field(ge=1, le=6)] | None = None

    @model_validator(mode="after")
    def _digits(self) -> "ArithmeticConfig":
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits {self.min_digits} is above max_digits {self.max_digits}")
        return self


class FactsConfig(Strict):
    entities: Positive = 40


class StringsConfig(Strict):
    train: Positive = 20000
    heldout: Positive = 200
    validation: Positive = 200
    min_len: Positive = 3
    max_len: Positive = 7
    alphabet: Annotated[str, Field(min_length=2)] = "abcdefghijklmnopqrstuvwxyz"

    @model_validator(mode="after")
    def _lengths(self) -> "StringsConfig":
        if self.min_len > self.max_len:
            raise ValueError(f"min_len {self.min_len} is above max_len {self.max_len}")
        return self


class DomainsConfig(Strict):
    arithmetic: ArithmeticConfig = ArithmeticConfig()
    facts: FactsConfig = FactsConfig()
    strings: StringsConfig = StringsConfig()


class VocabSizes(Strict):
    gemma: Positive = 1024
    qwen: Positive = 1024
    gpt_oss: Positive = 2304
    student: Positive = 1024

    def of(self, style: str) -> int:
        return getattr(self, style.replace("-", "_"))


class ModelSize(Strict):
    """Architecture sizes; head_dim 64 or 128 keeps the model servable by vLLM's CPU backend."""

    hidden_size: Positive = 128
    layers: Positive = 3
    heads: Positive = 2
    kv_heads: Positive = 2
    head_dim: Positive = 64
    intermediate_size: Positive = 512
    experts: Positive = 4
    experts_per_token: Positive = 2
    max_positions: Positive = 256


class TrainConfig(Strict):
    steps: Positive = 1000
    batch_size: Positive = 64
    lr: Annotated[float, Field(gt=0)] = 3e-3
    warmup_steps: NonNegative = 50
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    seed: int = 0
    # each batch split into this many micro-batches of similar row length (`chat.batch_rows`):
    # the same gradient with less padding. None rather than 1, so that the world keys of
    # teachers that do not set it stay the same.
    length_buckets: Positive | None = None
    # a moving average of the weights becomes the trained model (`train.average`); None (off)
    # keeps the world keys of teachers that do not set it.
    ema_decay: Annotated[float, Field(ge=0, lt=1)] | None = None
    # torch threads the model trains on, whatever the cores or the models beside it: on CPU the
    # weights' last bits depend on the thread count (`train.reproducible`).
    threads: Positive = 1

    @property
    def buckets(self) -> int:
        return self.length_buckets or 1

    def loop_arguments(self) -> dict:
        """Keyword arguments of `train.train`: every field but those of the data (the batch
        size; the length buckets, which become accumulation steps), the threads (set around
        the whole training by `train.reproducible.fixed_threads`) and a student's process
        layout under torchrun (`StudentTrainConfig.distributed`)."""
        layout = {"batch_size", "length_buckets", "threads", "distributed"}
        arguments = self.model_dump(exclude=layout)
        return {**arguments, "accumulation_steps": self.buckets}


class StudentTrainConfig(TrainConfig):
    """The student's training: a teacher's settings, and how torchrun spreads it."""

    # Under `torchrun ... -m polydistill run`: DDP or FSDP2, the backend and the collective
    # timeout (`config.distributed.DistributedConfig`); unset there, DDP with its defaults.
    # Ignored by a run in one process. `batch_size` is the global batch: the processes split
    # each (micro-)batch evenly, so their count must divide batch_size / length_buckets.
    distributed: DistributedConfig | None = None


class TeacherLicence(Strict):
    """What the config declares about a teacher's licence and origin; it overrides what the
    checkpoint's files and the built-in tables say (`polydistill.lineage.facts`)."""

    # a known licence id (`polydistill.lineage.licences.LICENCES`, e.g. apache-2.0, gemma,
    # llama3.1, qwen, qwen-research), or a new one described by the fields below
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.+-]*$")] | None = None
    # the licence's full name and the URL of its text
    name: str | None = None
    url: str | None = None
    # False where the licence forbids commercial use; a limit that applies where it allows it
    commercial: bool | None = None
    commercial_limit: str | None = None
    # what it asks of a distilled model: a notice to ship, a naming rule, a use policy (URL)
    # whose restrictions pass on to the model's users
    notice: str | None = None
    naming: str | None = None
    use_restrictions: str | None = None
    # the publisher of the weights and its jurisdiction (ISO 3166-1 alpha-2, e.g. US, CN)
    publisher: str | None = None
    origin: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None


class TeacherConfig(Strict):
    """A world teacher (family + domains + sizes), a real local checkpoint (`path`) or a model
    behind OpenAI-compatible servers (`served`): exactly one of the three.

    `tokenizer`: the world tokenizer style a world teacher trains with; by default its family's
    own (e.g. `student`, so that a student can be distilled from it without alignment).
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    family: Family
    domains: list[Domain] = []
    # a real checkpoint: a Hugging Face folder (config.json, safetensors, tokenizer) or a GGUF
    # file (dequantised on loading; needs the `gguf` package)
    path: LaxPath | None = None
    # the dtype a real checkpoint is loaded and run in (bfloat16 halves memory, also on CPU)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # a chat template for a checkpoint that has none (a base model, a GGUF file), or to replace
    # its own: a Jinja file, or a built-in (`gemma`, `chatml`; `teachers.templates`); `completion`
    # (as no template at all) reads prompts as plain text: a completion model
    template: str | None = None
    tokenizer: TokenizerStyle | None = None
    model: ModelSize = ModelSize()
    train: TrainConfig = TrainConfig()
    licence: TeacherLicence | None = None
    # a model behind OpenAI-compatible servers (vLLM): `config.served.ServedConfig`
    served: ServedConfig | None = None

    @field_validator("path")
    @classmethod
    def _is_checkpoint(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        if path.suffix.lower() == ".gguf":
            if not path.is_file():
                raise ValueError(f"no such GGUF file: {path}")
            return path
        if not path.is_dir():
            raise ValueError(f"no such directory: {path}")
        if not (path / "config.json").is_file():
            raise ValueError(f"not a Hugging Face checkpoint (no config.json): {path}")
        return path

    @model_validator(mode="after")
    def _world_teacher_has_domains(self) -> "TeacherConfig":
        if self.path is not None and self.served is not None:
            raise ValueError(
                f"teacher {self.name!r}: a checkpoint (path) or servers (served), not both"
            )
        if self.kind == "world" and not self.domains:
            raise ValueError(
                f"world teacher {self.name!r} needs domains (or a checkpoint path, or served)"
            )
        if self.kind != "world" and self.tokenizer is not None:
            raise ValueError(
                f"teacher {self.name!r}: a checkpoint (path) or a served model brings its own "
                "tokenizer"
            )
        if self.kind == "world" and (self.template is not None or self.dtype != "float32"):
            raise ValueError(
                f"world teacher {self.name!r}: template and dtype are for checkpoints (path)"
            )
        if self.kind == "served" and self.dtype != "float32":
            raise ValueError(f"teacher {self.name!r}: dtype is the server's to choose (served)")
        return self

    @property
    def kind(self) -> Literal["world", "path", "served"]:
        """Where the teacher comes from: trained in the world, a checkpoint, or servers."""
        if self.path is not None:
            return "path"
        return "served" if self.served is not None else "world"

    @property
    def tokenizer_style(self) -> str | None:
        """The world tokenizer style of a world teacher (family names are style names)."""
        return self.tokenizer or self.family if self.kind == "world" else None


class WorldConfig(Strict):
    seed: int = 0
    cache_dir: LaxPath = Path(".cache/polydistill/worlds")
    domains: DomainsConfig = DomainsConfig()
    vocab: VocabSizes = VocabSizes()
    eval_every: Positive = 100
    target_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.97
    # Real teachers are language models of all their text, prompts included; world teachers
    # learn their prompts too (this weight relative to the answer tokens; 0: answers only), so
    # how well a teacher models a prompt says where it is at home.
    prompt_loss_weight: Annotated[float, Field(ge=0, le=1)] = 0.02


class EvalConfig(Strict):
    heldout_limit: Positive | None = None
    batch_size: Positive = 128
    max_new_tokens: Positive = 24
    # A graders file (as `polydistill eval --graders` takes: a grader per tag, a default):
    # every model's held-out answers are graded by it; unset, exact match after stripping.
    graders: LaxPath | None = None
    # lm-evaluation-harness task YAMLs (local data, offline) run on the trained student; their
    # metrics go to `metrics.json` under the student's `lm_eval`.
    lm_eval_tasks: list[LaxPath] = []


FusionStrategy = Literal[
    "evidence", "uniform", "product", "fixed", "confidence", "route", "mince", "avgce"
]


class FusionConfig(Strict):
    """How the teachers' targets become one (`polydistill.fusion`).

    `evidence`: per example, softmax over teachers of -(bits per byte on the prompt and the
    teacher's own answer) / `temperature`; `uniform` / `product`: equal weights, mixed in
    probability space / as a product of experts; `fixed`: `weights` per teacher (sum 1);
    `confidence`: per position, softmax of log top-1 probability / `temperature`; `route`: each
    prompt to the teacher `routes` names for its tag; `mince` / `avgce`: FuseLLM's baselines,
    which read the reference answers.
    """

    strategy: FusionStrategy = "evidence"
    temperature: Annotated[float, Field(gt=0)] = 0.05
    weights: dict[str, float] | None = None
    routes: dict[str, str] | None = None


class CurriculumConfig(Strict):
    """The student's first `steps` optimiser steps draw rows of the `first` tags alone, then
    rows of every tag. Every model of a run (baselines too) trains on the same schedule.
    Measured on the specialists benchmark in benchmarks/RESULTS.md, "Student recipe"."""

    first: Annotated[list[TagName], Field(min_length=1)]
    steps: Positive


class StudentConfig(Strict):
    """The student distilled from `teachers` on their answers to the run's training prompts.

    `tags`: whose training prompts the student sees (default: with the world as `data`, all its
    teachers' domains; with prompt files, every tag of the train split; a record without a tag
    is tagged `untagged`), `prompts_per_tag` of each (one count, or a count per tag; a tag with
    fewer prompts repeats them, one a mapping leaves out keeps all of its own). Every teacher
    answers every prompt
    `completions_per_prompt` times (greedily, then sampled); the best-ranked answers are the
    student's, and the fused `top_k` + tail of all teachers at `temperature` are the targets of
    the `loss`; `ce_weight` mixes in cross-entropy on the answer tokens, `prompt_loss_weight`
    cross-entropy on the prompt tokens (per token, relative to an answer token; one weight, or
    one per tag, 0 for a tag a mapping leaves out). A tag these settings name that no training
    prompt has is an error when the prompts are read.
    """

    teachers: Annotated[list[str], Field(min_length=1)]
    fusion: FusionConfig = FusionConfig()
    family: Family = "qwen"
    tokenizer: TokenizerStyle = "student"
    model: ModelSize = ModelSize()
    train: StudentTrainConfig = StudentTrainConfig()
    tags: Annotated[list[TagName], Field(min_length=1)] | None = None
    prompts_per_tag: Positive | dict[str, Positive] | None = None
    loss: LossKind = "forward_kl"
    beta: Fraction = 0.5
    temperature: Annotated[float, Field(gt=0)] = 1.0
    top_k: Positive = 32
    ce_weight: Fraction = 0.0
    prompt_loss_weight: Fraction | dict[str, Fraction] = 0.0
    completions_per_prompt: Positive = 1
    curriculum: CurriculumConfig | None = None
    checkpoint_every: NonNegative = 100
    # Every `validate_every` steps (0: never) and at the end, the weights the run would return
    # are scored on the validation prompts against the answers the model's own fusion
    # chooses from its teachers (label-free but for the baselines that read gold in training
    # too: the oracle scores against gold, mince / avgce rank by it), and the best-scoring
    # weights become the model.
    validate_every: NonNegative = 0
    # Every `heldout_every` steps (0: never), each model's held-out accuracy per tag, measured
    # as the final evaluation measures it, on the weights being trained: a learning curve under
    # the model's `curve` in metrics.json. It chooses nothing and leaves the training as it is.
    heldout_every: NonNegative = 0
    # A store written by `polydistill capture` of this config: the teachers' answers and
    # readings come from it, no teacher model is loaded (its fingerprints must match).
    store: LaxPath | None = None
    # Where the student's first weights come from: a checkpoint, a depth-pruned teacher, or a
    # config + tokenizer (`config.student_init`); unset, a fresh world architecture
    # (`family`, `model`) on a world tokenizer style (`tokenizer`).
    init: StudentInit | None = None
    # On-policy / mixed distillation (`config.on_policy`): the student also learns from its own
    # samples, graded by its teachers; unset, off-policy only.
    on_policy: OnPolicyConfig | None = None

    @model_validator(mode="after")
    def _init_or_world_style(self) -> "StudentConfig":
        world_keys = sorted({"family", "tokenizer", "model"} & self.model_fields_set)
        if self.init is not None and world_keys:
            raise ValueError(
                f"{', '.join(world_keys)}: for a world-style student; init decides the "
                "student's architecture and tokenizer"
            )
        return self

    def prompt_weight_of(self, tag: str) -> float:
        """The prompt loss weight of `tag`'s prompts."""
        weights = self.prompt_loss_weight
        return weights.get(tag, 0.0) if isinstance(weights, dict) else weights

    @field_validator("prompt_loss_weight", "prompts_per_tag", mode="before")
    @classmethod
    def _mapping_names_tags(cls, values: Any, info: ValidationInfo) -> Any:
        """A mapping's own one-line errors (a union's would blame its number branch)."""
        if not isinstance(values, dict):
            return values
        counts = info.field_name == "prompts_per_tag"
        for domain, value in values.items():
            if not isinstance(domain, str) or not domain:
                raise ValueError(f"{domain!r} is not a tag")
            number = not isinstance(value, bool) and isinstance(
                value, int if counts else int | float
            )
            if counts and not (number and value > 0):
                raise ValueError(f"{domain}: {value!r} is not a positive number of prompts")
            if not counts and not (number and 0 <= value <= 1):
                raise ValueError(f"{domain}: {value!r} is not a weight between 0 and 1")
        return values


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
    """Baselines trained beside the student on the same prompts and token budget:
    `single` (each teacher alone), `seqkd` (fine-tuning on the chosen answers, no logits),
    `oracle` (fine-tuning on the gold answers), `leave_one_out` (the student's own recipe
    without each of its teachers in turn: what each teacher is worth), or any other fusion
    strategy by name."""

    baselines: list[Baseline] = []
    keep_models: bool = False
    """Also write each baseline's trained weights, a standard checkpoint like `student/`, to
    `models/<baseline>/` (e.g. `models/seqkd/`) for measuring them outside the run."""


def _error_at(location: tuple[str, ...], message: str) -> ValidationError:
    """An error at `location` below the field being validated (pydantic prefixes the field)."""
    detail = InitErrorDetails(
        type=PydanticCustomError("invalid", "{message}", {"message": message}),
        loc=location,
        input=None,
    )
    return ValidationError.from_exception_data("config", [detail])


class WorldData(Strict):
    """The specialists world's examples as the prompts: tag = domain, held-out = test split."""

    source: Literal["world"]


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
    world: WorldConfig = WorldConfig()
    # The prompts: `{source: world}` (the default: the world's domains' examples) or the
    # user's prompt files (`polydistill.data.DataConfig`: `train`, `validation`, `test`, ...).
    data: DataChoice = WorldData(source="world")
    teachers: Annotated[list[TeacherConfig], Field(min_length=1)]
    eval: EvalConfig = EvalConfig()
    threads: Positive | None = None
    student: StudentConfig | None = None
    # A policy file (`polydistill.lineage.policy`): which teachers the student may learn from,
    # checked before any teacher is loaded, called or read from a store.
    policy: LaxPath | None = None

    benchmark: BenchmarkConfig | None = None

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
                raise _error_at(("teachers", i), f"no teacher named {name!r} (teachers: {known})")
        if len(set(student.teachers)) != len(student.teachers):
            raise _error_at(("teachers",), f"a teacher is listed twice: {student.teachers}")
        world_data = isinstance(info.data.get("data"), WorldData)
        if student.tags is None and world_data:
            domains = sorted({d for n in student.teachers for d in teachers[n].domains})
            if not domains:
                raise _error_at(
                    ("tags",),
                    "the student's teachers have no domains; list the tags whose prompts "
                    "the student sees",
                )
            student = student.model_copy(update={"tags": domains})
        for field in ("prompts_per_tag", "prompt_loss_weight"):
            per_tag = getattr(student, field)
            if student.tags and isinstance(per_tag, dict) and set(per_tag) - set(student.tags):
                unknown = sorted(set(per_tag) - set(student.tags))
                raise _error_at((field,), f"{unknown} not among the student's tags {student.tags}")
        if student.validate_every and student.store is not None:
            raise _error_at(
                ("validate_every",),
                "a store (student.store) holds the teachers' readings of the training prompts "
                "only, not of the validation prompts; set validate_every: 0",
            )
        _check_fusion(student)
        _check_curriculum(student)
        _check_on_policy(student)
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


def _check_curriculum(student: StudentConfig) -> None:
    curriculum = student.curriculum
    if curriculum is None:
        return
    if student.tags is not None:
        unknown = sorted(set(curriculum.first) - set(student.tags))
        if unknown:
            raise _error_at(
                ("curriculum", "first"), f"{unknown} not among the student's tags {student.tags}"
            )
        if set(curriculum.first) == set(student.tags):
            raise _error_at(
                ("curriculum", "first"), "names every tag of the student: it would change nothing"
            )
    if curriculum.steps >= student.train.steps:
        raise _error_at(
            ("curriculum", "steps"),
            f"{curriculum.steps} is not below the student's {student.train.steps} training steps",
        )


def _check_on_policy(student: StudentConfig) -> None:
    """On-policy grading fuses the student's samples without reference answers. (It asks the
    live teachers, also beside a store, which holds their readings of their own answers.)"""
    if student.on_policy is None:
        return
    if student.fusion.strategy in ("mince", "avgce"):
        raise _error_at(
            ("on_policy",),
            f"fusion strategy {student.fusion.strategy} ranks teachers by reference answers, "
            "which the student's samples have none of; choose another student.fusion.strategy",
        )


def _check_fusion(student: StudentConfig) -> None:
    fusion, names = student.fusion, student.teachers
    if fusion.strategy == "fixed" and fusion.weights is None:
        raise _error_at(("fusion", "weights"), "strategy fixed needs a weight per teacher")
    if fusion.weights is not None:
        unknown = sorted(set(fusion.weights) - set(names))
        if unknown:
            raise _error_at(("fusion", "weights"), f"unknown teacher(s) {unknown}")
        total = sum(fusion.weights.values())
        if min(fusion.weights.values()) < 0 or abs(total - 1.0) > 1e-6:
            raise _error_at(
                ("fusion", "weights"), f"must be non-negative and sum to 1, got {total}"
            )
    if fusion.strategy == "route" and fusion.routes is None:
        raise _error_at(("fusion", "routes"), "strategy route needs a teacher per tag")
    if fusion.routes is not None:
        unknown = sorted(set(fusion.routes.values()) - set(names))
        if unknown:
            raise _error_at(("fusion", "routes"), f"unknown teacher(s) {unknown}")
        missing = sorted(set(student.tags or []) - set(fusion.routes))
        if missing:
            raise _error_at(("fusion", "routes"), f"no teacher for tag(s) {missing}")


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
