"""The `student:` section: which teachers the student learns from, on which prompts, how their
targets are fused, and how it trains.

    student:
      teachers: [gemma, gptoss, qwen]
      fusion: {strategy: evidence, temperature: 0.05}
      prompts_per_tag: 2000
      train: {steps: 600, batch_size: 128}

Read by the student stage (`polydistill.student`). `check_student` holds the checks that need
the whole section (the run config adds those that need the teachers, `RunConfig`).
"""

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from polydistill.config.fields import (
    Family,
    Fraction,
    LaxPath,
    LossKind,
    NonNegative,
    Positive,
    Strict,
    TagName,
    TokenizerStyle,
    error_at,
)
from polydistill.config.on_policy import OnPolicyConfig
from polydistill.config.student_init import StudentInit
from polydistill.config.training import ModelSize, StudentTrainConfig

FusionStrategy = Literal[
    "evidence", "uniform", "product", "fixed", "confidence", "route", "mince", "avgce"
]


class FusionConfig(Strict):
    """How the teachers' targets become one (`polydistill.fusion`)."""

    strategy: FusionStrategy = "evidence"
    """`evidence`: per example, softmax over teachers of -(bits per byte on the prompt and the
    teacher's own answer) / `temperature`: label-free routing; `uniform`: equal weights, mixed
    in probability space; `product`: equal weights, a product of experts (mean of
    log-probabilities); `fixed`: `weights` per teacher; `confidence`: per position, softmax of
    log top-1 probability / `temperature`; `route`: each prompt to the teacher `routes` names
    for its tag; `mince` / `avgce`: FuseLLM's, which read the reference answers (baselines
    only)."""
    temperature: Annotated[float, Field(gt=0)] = 0.05
    """Softmax temperature of `evidence` and `confidence`."""
    weights: dict[str, float] | None = None
    """`fixed`: a weight per teacher, non-negative, summing to 1."""
    routes: dict[str, str] | None = None
    """`route`: a teacher per tag, covering every tag of the student."""


class CurriculumConfig(Strict):
    """The first optimiser steps draw rows of some tags alone, then rows of every tag. Every
    model of a run (baselines too) trains on the same schedule. Measured on the specialists
    benchmark in benchmarks/RESULTS.md, "Student recipe"."""

    first: Annotated[list[TagName], Field(min_length=1)]
    """The tags trained alone first (not all of the student's tags)."""
    steps: Positive
    """How many optimiser steps draw only those tags' rows (fewer than the training steps)."""


class StudentConfig(Strict):
    """The student distilled from `teachers` on their answers to the run's training prompts:
    every teacher answers every prompt `completions_per_prompt` times, the best-ranked answers
    are the student's, and the fused `top_k` + tail of all teachers at `temperature` are the
    targets of the `loss`. References never reach the student."""

    teachers: Annotated[list[str], Field(min_length=1)]
    """The teachers the student is distilled from: any number, any tokenizer (each is aligned
    byte for byte and projected into the student's vocabulary)."""
    fusion: FusionConfig = FusionConfig()
    """How the teachers' targets become one."""
    family: Family = "qwen"
    """A world-style student's architecture (without `init`)."""
    tokenizer: TokenizerStyle = "student"
    """A world-style student's tokenizer style (without `init`)."""
    model: ModelSize = ModelSize()
    """A world-style student's sizes (without `init`)."""
    train: StudentTrainConfig = StudentTrainConfig()
    """The student's training (every baseline of the run trains the same way)."""
    tags: Annotated[list[TagName], Field(min_length=1)] | None = None
    """Whose training prompts the student sees; tags are free strings. Unset: with the world's
    prompts, its teachers' domains; with prompt files, every tag of the train split (a record
    without a tag is `untagged`). A tag these settings name that no training prompt has is an
    error when the prompts are read."""
    prompts_per_tag: Positive | dict[str, Positive] | None = None
    """Training prompts of each tag: one count, or a count per tag (`{facts: 4000}`; a tag the
    mapping leaves out keeps all of its own); a tag with fewer prompts repeats them, so that
    its share of the training is the one configured. Unset: every prompt."""
    loss: LossKind = "forward_kl"
    """The divergence between the fused targets and the student: `forward_kl`, `reverse_kl`,
    `jsd`, `skew_kl` or `tv`."""
    beta: Fraction = 0.5
    """The mixing weight of `jsd` and `skew_kl`."""
    temperature: Annotated[float, Field(gt=0)] = 1.0
    """Distillation temperature: the teachers' and the student's logits are divided by it."""
    top_k: Positive = 32
    """Token ids kept per position, per teacher and after fusion; the rest of the mass is one
    tail bucket."""
    ce_weight: Fraction = 0.0
    """Weight of cross-entropy on the chosen answer's tokens, mixed into the loss."""
    prompt_loss_weight: Fraction | dict[str, Fraction] = 0.0
    """The student also learns the prompts as a language model: cross-entropy per prompt token,
    at this weight relative to an answer token; label-free, as prompts are the data. One
    weight, or one per tag (`{facts: 0.2}`: a tag left out gets 0), since some tags' prompts
    carry language and others random digits; seqkd and the oracle get the same weights."""
    completions_per_prompt: Positive = 1
    """Answers each teacher writes per prompt (the first greedy, the rest sampled at
    temperature 1); the student keeps that many, the best-ranked."""
    curriculum: CurriculumConfig | None = None
    """`{first: [facts], steps: 300}`: tags trained alone first; unset, every batch mixes all
    tags."""
    checkpoint_every: NonNegative = 100
    """Optimiser steps between resumable checkpoints of each trained model (0: none)."""
    validate_every: NonNegative = 0
    """Every this many steps (0: never) and at the end, each model's weights (the moving
    average with `ema_decay`) are scored by greedy exact-match agreement with the answers its
    own fusion chooses among the teachers' on the validation prompts (no gold answer is read,
    except by the baselines that train on gold or rank by it: the oracle scores against gold,
    `mince` / `avgce` choose their answers with it), and the best become the model;
    `metrics.json` gives each model's `selection`. Not with `store`, which holds the training
    prompts only."""
    heldout_every: NonNegative = 0
    """Every N steps (0: never), each model's held-out accuracy per tag, measured as the final
    evaluation measures it, on the weights being trained: a learning curve under the model's
    `curve` in metrics.json. It chooses nothing and leaves the training as it is."""
    store: LaxPath | None = None
    """A store written by `polydistill capture` of this config: the teachers' answers and
    readings come from it and no teacher is loaded (each teacher's weights, tokenizer and chat
    template hashes must match the store's). The run reads it a block at a time and keeps each
    model's rows on disk, read a batch at a time, so neither the readings nor the rows of every
    prompt are in memory at once (`benchmarks/RESULTS.md`, "Memory in the number of prompts")."""
    init: StudentInit | None = None
    """Where the student's first weights come from: a checkpoint, a depth-pruned teacher, or a
    config + tokenizer (random init, seeded by `train.seed`); unset, a fresh world architecture
    (`family`, `model`) on a world tokenizer style (`tokenizer`). With `init`, `family`,
    `tokenizer` and `model` are errors."""
    on_policy: OnPolicyConfig | None = None
    """On-policy / mixed distillation: the student (and its leave-one-out copies) also learns
    from its own samples, graded by its teachers; unset, off-policy only. With `store`, the
    off-policy readings come from the store and the live teachers grade the samples. Not with
    the `mince` / `avgce` strategies."""

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


def check_student(student: StudentConfig) -> None:
    """The checks that need the whole section: fusion settings, curriculum, on-policy."""
    _check_fusion(student)
    _check_curriculum(student)
    _check_on_policy(student)


def _check_curriculum(student: StudentConfig) -> None:
    curriculum = student.curriculum
    if curriculum is None:
        return
    if student.tags is not None:
        unknown = sorted(set(curriculum.first) - set(student.tags))
        if unknown:
            raise error_at(
                ("curriculum", "first"), f"{unknown} not among the student's tags {student.tags}"
            )
        if set(curriculum.first) == set(student.tags):
            raise error_at(
                ("curriculum", "first"), "names every tag of the student: it would change nothing"
            )
    if curriculum.steps >= student.train.steps:
        raise error_at(
            ("curriculum", "steps"),
            f"{curriculum.steps} is not below the student's {student.train.steps} training steps",
        )


def _check_on_policy(student: StudentConfig) -> None:
    """On-policy grading fuses the student's samples without reference answers. (It asks the
    live teachers, also beside a store, which holds their readings of their own answers.)"""
    if student.on_policy is None:
        return
    if student.fusion.strategy in ("mince", "avgce"):
        raise error_at(
            ("on_policy",),
            f"fusion strategy {student.fusion.strategy} ranks teachers by reference answers, "
            "which the student's samples have none of; choose another student.fusion.strategy",
        )


def _check_fusion(student: StudentConfig) -> None:
    fusion, names = student.fusion, student.teachers
    if fusion.strategy == "fixed" and fusion.weights is None:
        raise error_at(("fusion", "weights"), "strategy fixed needs a weight per teacher")
    if fusion.weights is not None:
        unknown = sorted(set(fusion.weights) - set(names))
        if unknown:
            raise error_at(("fusion", "weights"), f"unknown teacher(s) {unknown}")
        total = sum(fusion.weights.values())
        if min(fusion.weights.values()) < 0 or abs(total - 1.0) > 1e-6:
            raise error_at(("fusion", "weights"), f"must be non-negative and sum to 1, got {total}")
    if fusion.strategy == "route" and fusion.routes is None:
        raise error_at(("fusion", "routes"), "strategy route needs a teacher per tag")
    if fusion.routes is not None:
        unknown = sorted(set(fusion.routes.values()) - set(names))
        if unknown:
            raise error_at(("fusion", "routes"), f"unknown teacher(s) {unknown}")
        missing = sorted(set(student.tags or []) - set(fusion.routes))
        if missing:
            raise error_at(("fusion", "routes"), f"no teacher for tag(s) {missing}")
