"""The models a run trains (the student, then the benchmark's baselines) and what each learns.

    for plan in model_plans(cfg):
        rows, accounts = plan_data(cfg, plan, teachers, tokenizer, prompts, readings, projections)

A plan names a fusion strategy (with fixed weights for a single teacher), or fine-tuning on the
chosen (`seqkd`) or the gold (oracle) answers, and possibly a teacher it leaves out. Its weights
say how much its fusion hears each teacher on each prompt (`targets.example_weights`); its rows
are the chosen answers projected and fused (`targets.student_targets`). Every model sees the
same prompts, steps and batch size: the same token budget.
"""

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from polydistill.config import RunConfig
from polydistill.data import PromptRecord
from polydistill.student.prompts import Prompts, tag_of
from polydistill.student.targets import (
    DistillationData,
    Tally,
    answer_bits_per_byte,
    choose_answers,
    example_weights,
    fused_rows,
)
from polydistill.teachers.protocol import Teacher
from polydistill.teachers.readings import Readings, readings_without


@dataclass(frozen=True)
class ModelPlan:
    """One model to train: `student` or `baseline:<what>`, by a fusion strategy (with fixed
    weights for a single teacher) or by fine-tuning (`sft`: "chosen" or "gold" answers)."""

    name: str
    strategy: str | None = None
    fixed: dict[str, float] | None = None
    sft: str | None = None
    without: str | None = None  # leave-one-out: the student's recipe without this teacher


def model_plans(cfg: RunConfig) -> list[ModelPlan]:
    """The student, then the benchmark's baselines in the order configured."""
    s = cfg.student
    plans = [ModelPlan("student", s.fusion.strategy)]
    for baseline in cfg.benchmark.baselines if cfg.benchmark else []:
        if baseline == "single":
            plans += [ModelPlan(f"baseline:single:{t}", "fixed", {t: 1.0}) for t in s.teachers]
        elif baseline == "seqkd":
            plans.append(ModelPlan("baseline:seqkd", s.fusion.strategy, sft="chosen"))
        elif baseline == "oracle":
            plans.append(ModelPlan("baseline:oracle", sft="gold"))
        elif baseline == "leave_one_out":
            plans += [
                ModelPlan(f"baseline:without:{t}", s.fusion.strategy, without=t) for t in s.teachers
            ]
        elif baseline != s.fusion.strategy:
            plans.append(ModelPlan(f"baseline:{baseline}", baseline, s.fusion.weights))
    return plans


def reads_gold(plan: ModelPlan) -> bool:
    """Whether the plan reads the prompts' references (the oracle, mince, avgce)."""
    return plan.sft == "gold" or plan.strategy in ("mince", "avgce")


def gold_bits_per_byte(teachers: list[Teacher], prompts: Prompts) -> torch.Tensor:
    """`[teachers, prompts]` bits per byte of each teacher on the gold answers (baselines only)."""
    return torch.tensor(
        [
            answer_bits_per_byte(
                t.score(prompts.texts, prompts.gold, top_k=1, temperature=1.0), prompts.gold
            )
            for t in teachers
        ],
        dtype=torch.float64,
    )


def plan_sources(
    plan: ModelPlan, teachers: list[Teacher], readings: Readings
) -> tuple[list[Teacher], Readings]:
    """The teachers and readings a plan learns from: all, or all but the one it leaves out."""
    if plan.without is None:
        return teachers, readings
    kept = [t for t in teachers if t.name != plan.without]
    return kept, readings_without(readings, plan.without)


def plan_weights(
    cfg: RunConfig, plan: ModelPlan, teachers: list[Teacher], prompts: Prompts, readings: Readings
) -> torch.Tensor:
    """`[teachers, prompts]`: how much the plan's fusion hears each teacher on each prompt."""
    gold = None
    if plan.strategy in ("mince", "avgce"):
        gold = gold_bits_per_byte(teachers, prompts)
    return example_weights(
        plan.strategy,
        [t.name for t in teachers],
        readings,
        prompts.texts,
        prompts.tags,
        temperature=cfg.student.fusion.temperature,
        fixed=plan.fixed,
        routes=cfg.student.fusion.routes,
        gold_bits_per_byte=gold,
    )


def plan_rows(
    cfg: RunConfig,
    plan: ModelPlan,
    teachers: list[Teacher],
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    readings: Readings,
    projections: dict | None = None,
) -> tuple[DistillationData, Tally]:
    """The plan's fused rows and the tally of its accounts (for `sft` plans: the rows of its
    chosen answers), of `prompts` alone: a run can call it chunk by chunk. `projections`: one
    dict for all plans of a chunk, so that an answer is projected once."""
    s = cfg.student
    teachers, readings = plan_sources(plan, teachers, readings)
    weights = plan_weights(cfg, plan, teachers, prompts, readings)
    return fused_rows(
        readings,
        teachers,
        tokenizer,
        prompts.texts,
        prompts.tags,
        strategy=plan.strategy,
        weights=weights,
        temperature=s.fusion.temperature,
        top_k=s.top_k,
        completions_per_prompt=s.completions_per_prompt,
        projections=projections,
    )


def plan_data(cfg: RunConfig, plan: ModelPlan, *inputs, **options) -> tuple[DistillationData, dict]:
    """The plan's fused rows and accounts (`contributions.json`), all in memory; `plan_rows`'
    arguments."""
    rows, tally = plan_rows(cfg, plan, *inputs, **options)
    return rows, tally.accounts(plan.strategy)


def validation_references(
    cfg: RunConfig,
    plan: ModelPlan,
    teachers: list[Teacher],
    records: list[PromptRecord],
    prompts: Prompts,
    readings: Readings,
) -> dict[str, list[PromptRecord]]:
    """Per tag, each validation record with the reference the plan is chosen by: the answer its
    fusion chooses among the teachers' answers (label-free, but for the gold-reading `mince` /
    `avgce`), or gold for the oracle."""
    if plan.sft == "gold":
        answers = prompts.gold
    else:
        teachers, readings = plan_sources(plan, teachers, readings)
        weights = plan_weights(cfg, plan, teachers, prompts, readings)
        chosen = choose_answers(readings, weights, 1)
        answers = [readings.candidates[c].text.strip() for _, c in chosen]
    references: dict[str, list[PromptRecord]] = {}
    for record, answer in zip(records, answers, strict=True):
        references.setdefault(tag_of(record), []).append(replace(record, reference=answer))
    return references


def trains_on_policy(cfg: RunConfig, plan: ModelPlan) -> bool:
    """Whether the plan also learns from its own samples (`student.on_policy`): the student and
    its leave-one-out copies (the student's recipe without one teacher); the other baselines
    are off-policy references."""
    on_policy = plan.name == "student" or plan.without is not None
    return cfg.student.on_policy is not None and on_policy


def student_fingerprint(cfg: RunConfig, source: str, plan: ModelPlan) -> dict:
    """Everything that shapes one trained model: compared on resume, hashed into its folder.
    `source`: the identity of the student's inputs (`StudentSource.identity`). The on-policy
    settings shape only the plans that train on-policy: an off-policy baseline keeps its folder
    (and its trained weights) whatever they are."""
    student = cfg.student
    if not trains_on_policy(cfg, plan):
        student = student.model_copy(update={"on_policy": None})
    return {
        "world": source,
        "teachers": [
            t.model_dump(mode="json") for t in cfg.teachers if t.name in cfg.student.teachers
        ],
        "student": student.model_dump(mode="json"),
        # `without` only when set, so the folders of every other plan keep their names
        "plan": {k: v for k, v in plan.__dict__.items() if k != "without" or v is not None},
        "generation": {"max_new_tokens": cfg.eval.max_new_tokens, "batch": cfg.eval.batch_size},
    }


def model_work_dir(out: Path, cfg: RunConfig, source: str, plan: ModelPlan) -> Path:
    """The plan's work folder beside `out`, named by its fingerprint (so a rerun resumes)."""
    text = json.dumps(student_fingerprint(cfg, source, plan), sort_keys=True)
    label = plan.name.replace(":", "-")
    return out.parent / f".{out.name}.{label}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
