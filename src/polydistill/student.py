"""The student stage of `polydistill run`: distil the student (and the benchmark's baselines)
from its teachers.

    prompts = student_prompts(cfg, world)
    teachers = student_teachers(cfg, world)
    readings = teacher_readings(cfg, teachers, prompts)       # every teacher, once
    projections = {}
    for plan in model_plans(cfg):
        rows, accounts = plan_data(cfg, plan, teachers, tokenizer, prompts, readings, projections)
        batches, loss_fn = plan_batches(cfg, plan, tokenizer, prompts, rows)
        model = train_model(cfg, world, plan, batches, loss_fn, tokenizer, work_dir)

1. Prompts: the training prompts of the student's domains (never their answers), at most
   `prompts_per_domain` of each.
2. Readings (`teachers.readings`): every teacher answers every prompt, and every teacher scores
   every distinct answer in its own tokenizer and chat template.
3. Per model to train (the student, then each baseline of `benchmark.baselines`): the fusion
   strategy weighs the teachers, picks each prompt's answer, and the teachers' readings of it are
   projected into the student's vocabulary (once per answer for all models) and fused
   (`student_targets`); or, for `seqkd` and `oracle`, plain fine-tuning on the chosen or the
   gold answers.
4. A fresh student of `student.family` is trained on that (`train`), resuming from the model's
   work folder when it holds this config's checkpoints. `student_runs` runs step 4 for all
   models, side by side in worker processes when there are cores for it.

Every model sees the same prompts, steps and batch size: the same token budget.
"""

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import Progress as Bars
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from polydistill.chat import supervised_batches
from polydistill.config import RunConfig
from polydistill.distill import distillation_batches, distillation_loss, with_prompt_labels
from polydistill.progress import console, progress_bars
from polydistill.store.cached import local_fingerprint, open_store, store_teachers
from polydistill.student_targets import (
    DistillationData,
    answer_bits_per_byte,
    choose_answers,
    example_weights,
    student_targets,
)
from polydistill.teachers.checkpoint import DTYPES
from polydistill.teachers.local import local_teacher
from polydistill.teachers.protocol import Progress, Teacher
from polydistill.teachers.readings import Readings, gather_readings, readings_without
from polydistill.train import BatchFn, LossFn, sft_loss, train
from polydistill.train.checkpoint import list_checkpoints
from polydistill.train.loop import CHECKPOINTS_DIR
from polydistill.world.architectures import build_model
from polydistill.world.build import World
from polydistill.world.domains import Example


@dataclass(frozen=True)
class Prompts:
    texts: list[str]
    domains: list[str]
    gold: list[str]  # read only by the oracle and the gold-reading fusion baselines


@dataclass(frozen=True)
class ModelPlan:
    """One model to train: `student` or `baseline:<what>`, by a fusion strategy (with fixed
    weights for a single teacher) or by fine-tuning (`sft`: "chosen" or "gold" answers)."""

    name: str
    strategy: str | None = None
    fixed: dict[str, float] | None = None
    sft: str | None = None
    without: str | None = None  # leave-one-out: the student's recipe without this teacher


def student_prompts(cfg: RunConfig, world: World) -> Prompts:
    """`prompts_per_domain` training prompts of each student domain (all when unset); a domain
    with fewer prompts repeats them, so that its share of the training is the one configured."""
    s = cfg.student
    counts = s.prompts_per_domain
    if not isinstance(counts, dict):
        counts = dict.fromkeys(s.domains, counts) if counts else {}
    examples = []
    for domain in s.domains:
        pool = world.train[domain]
        wanted = counts.get(domain, len(pool))
        examples += [(domain, pool[i % len(pool)]) for i in range(wanted)]
    return Prompts(
        [e.prompt for _, e in examples], [d for d, _ in examples], [e.answer for _, e in examples]
    )


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


def student_teachers(cfg: RunConfig, world: World, policy: str | None = None) -> list[Teacher]:
    """The student's teachers: live checkpoints, or their captured readings (`student.store`,
    which must have been captured under the teacher policy whose digest is `policy`)."""
    paths = {t.name: t.path or world.teachers[t.name] for t in cfg.teachers}
    configs = {t.name: t for t in cfg.teachers}
    names = cfg.student.teachers
    if cfg.student.store is None:
        return [
            local_teacher(
                n, paths[n], cfg.eval.batch_size, DTYPES[configs[n].dtype], configs[n].template
            )
            for n in names
        ]
    expected = {
        n: local_fingerprint(paths[n], f"teacher {n!r}", configs[n].template) for n in names
    }
    return store_teachers(open_store(cfg.student.store, policy), expected)


def _rate_task(bars: Bars) -> Callable[[str, int], Progress]:
    """A factory of bars counting rows and showing tokens per second."""

    def make(description: str, total: int) -> Progress:
        task = bars.add_task(description, total=total, rate="")
        started, tokens = time.perf_counter(), 0

        def advance(rows: int, new_tokens: int) -> None:
            nonlocal tokens
            tokens += new_tokens
            rate = tokens / max(time.perf_counter() - started, 1e-9)
            bars.update(task, advance=rows, rate=f"{rate:,.0f} tok/s")

        return advance

    return make


def teacher_readings(cfg: RunConfig, teachers: list[Teacher], prompts: Prompts) -> Readings:
    s = cfg.student
    with progress_bars() as bars:
        readings = gather_readings(
            teachers,
            prompts.texts,
            samples=s.completions_per_prompt,
            max_new_tokens=cfg.eval.max_new_tokens,
            seed=s.train.seed,
            top_k=s.top_k,
            temperature=s.temperature,
            progress=_rate_task(bars),
        )
    console.log(
        f"student: {len(prompts.texts)} prompts, {len(readings.candidates)} distinct answers "
        f"from {', '.join(t.name for t in teachers)}"
    )
    return readings


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
        prompts.domains,
        temperature=cfg.student.fusion.temperature,
        fixed=plan.fixed,
        routes=cfg.student.fusion.routes,
        gold_bits_per_byte=gold,
    )


def validation_prompts(cfg: RunConfig, world: World) -> Prompts:
    """Every validation prompt of the student's domains (and its gold answer, for the oracle)."""
    examples = [e for d in cfg.student.domains for e in world.validation[d]]
    texts, domains = [e.prompt for e in examples], [e.domain for e in examples]
    return Prompts(texts, domains, [e.answer for e in examples])


def validation_references(
    cfg: RunConfig, plan: ModelPlan, teachers: list[Teacher], prompts: Prompts, readings: Readings
) -> dict[str, list[Example]]:
    """Per domain, each validation prompt with the answer the plan would learn for it: the one
    its fusion chooses among the teachers' answers (label-free, but for the gold-reading
    `mince` / `avgce`), or gold for the oracle."""
    if plan.sft == "gold":
        answers = prompts.gold
    else:
        teachers, readings = plan_sources(plan, teachers, readings)
        weights = plan_weights(cfg, plan, teachers, prompts, readings)
        chosen = choose_answers(readings, weights, 1)
        answers = [readings.candidates[c].text.strip() for _, c in chosen]
    references: dict[str, list[Example]] = {}
    for text, domain, answer in zip(prompts.texts, prompts.domains, answers, strict=True):
        references.setdefault(domain, []).append(Example(domain, text, answer))
    return references


def plan_data(
    cfg: RunConfig,
    plan: ModelPlan,
    teachers: list[Teacher],
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    readings: Readings,
    projections: dict | None = None,
) -> tuple[DistillationData, dict]:
    """The plan's fused rows and accounts (for `sft` plans: the rows of its chosen answers).
    `projections`: one dict for all plans of a run, so that an answer is projected once."""
    s = cfg.student
    teachers, readings = plan_sources(plan, teachers, readings)
    weights = plan_weights(cfg, plan, teachers, prompts, readings)
    return student_targets(
        readings,
        teachers,
        tokenizer,
        prompts.texts,
        prompts.domains,
        strategy=plan.strategy,
        weights=weights,
        temperature=s.fusion.temperature,
        top_k=s.top_k,
        completions_per_prompt=s.completions_per_prompt,
        projections=projections,
    )


def plan_batches(
    cfg: RunConfig,
    plan: ModelPlan,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    data: DistillationData | None,
) -> tuple[BatchFn, LossFn]:
    s, t = cfg.student, cfg.student.train
    first, steps = (s.curriculum.first, s.curriculum.steps) if s.curriculum else ([], 0)
    weights = [s.prompt_weight_of(d) for d in prompts.domains]
    if plan.sft == "gold":
        rows = [i for i, d in enumerate(prompts.domains) if d in first]
        batches = supervised_batches(
            tokenizer, prompts.texts, prompts.gold, t.batch_size, t.seed, "oracle",
            prompt_weight=weights, buckets=t.buckets, first_rows=rows, first_batches=steps,
        )  # fmt: skip
        return batches, sft_loss
    rows = [r for r, i in enumerate(data.prompt_of) if prompts.domains[i] in first]
    row_weights = [weights[i] for i in data.prompt_of] if any(weights) else None
    batches = distillation_batches(
        data, tokenizer.pad_token_id, t.batch_size, t.seed, t.buckets, rows, steps, row_weights
    )
    if plan.sft == "chosen":
        return with_prompt_labels(batches), sft_loss
    return batches, distillation_loss(s.loss, s.beta, s.temperature, s.ce_weight, len(tokenizer))


def student_fingerprint(cfg: RunConfig, world: World, plan: ModelPlan) -> dict:
    """Everything that shapes one trained model: compared on resume, hashed into its folder."""
    return {
        "world": world.root.name,
        "teachers": [
            t.model_dump(mode="json") for t in cfg.teachers if t.name in cfg.student.teachers
        ],
        "student": cfg.student.model_dump(mode="json"),
        # `without` only when set, so the folders of every other plan keep their names
        "plan": {k: v for k, v in plan.__dict__.items() if k != "without" or v is not None},
        "generation": {"max_new_tokens": cfg.eval.max_new_tokens, "batch": cfg.eval.batch_size},
    }


def model_work_dir(out: Path, cfg: RunConfig, world: World, plan: ModelPlan) -> Path:
    text = json.dumps(student_fingerprint(cfg, world, plan), sort_keys=True)
    label = plan.name.replace(":", "-")
    return out.parent / f".{out.name}.{label}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def train_model(
    cfg: RunConfig,
    world: World,
    plan: ModelPlan,
    batches: BatchFn,
    loss_fn: LossFn,
    tokenizer: PreTrainedTokenizerBase,
    work_dir: Path,
    on_step: Callable[[int, dict], None] | None = None,
    select_by: Callable[[PreTrainedModel], float] | None = None,
) -> PreTrainedModel:
    """A fresh student trained by `loss_fn` on `batches`, resuming from `work_dir`; with
    `student.validate_every`, the weights `select_by` scores best (`train.selection`)."""
    s, t = cfg.student, cfg.student.train
    model = build_model(s.family, s.model, tokenizer, t.seed)
    found = list_checkpoints(work_dir / CHECKPOINTS_DIR)
    if found:
        console.log(f"{plan.name}: resuming from {found[-1]}")
    train(
        model,
        batches,
        loss_fn,
        **t.loop_arguments(),
        run_dir=work_dir,
        checkpoint_every=s.checkpoint_every,
        resume=s.checkpoint_every > 0,
        fingerprint=student_fingerprint(cfg, world, plan),
        on_step=on_step,
        select_every=s.validate_every,
        select_by=select_by,
    )
    model.eval()
    return model


def student_tokenizer(cfg: RunConfig, world: World) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(world.tokenizer_dir(cfg.student.tokenizer))
