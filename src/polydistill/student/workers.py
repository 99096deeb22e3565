"""Training and scoring the student and the benchmark's baselines, side by side when cores allow.

    scores = train_and_score(cfg, stage, jobs)   # jobs: one PlanJob per model

Once its training rows exist, every model (the student, each baseline) is independent of the
others. Each trains and is scored on `student.train.threads` torch threads (default one; the
world's models are so small that two single-thread trainings take about as long as one on two
threads) with deterministic algorithms (`train.reproducible`). With `cores` = `threads` (or
every core), `min(models, cores // student.train.threads)` worker processes train one model at
a time each; with one worker they train in this process, one after another. Either way a model
resumes from the checkpoints in its work folder, is scored on the held-out sets where it was
trained, and has the same weights, bit for bit, from the same rows (the teachers' readings,
computed before, in the parent process on its `threads`).

A worker is a spawned process (no memory shared with this one): it reads the plan's rows a batch
at a time from a folder in a work folder (`rows`, written once per distinct set of rows) and
leaves the trained model in `work/final`, where the parent picks up the student. With
`student.on_policy`, the models that learn from their own samples (`plans.trains_on_policy`)
build their teachers in the worker from the checkpoints in `Stage.teachers`, hold them while
they train, and release them after.
"""

import multiprocessing
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill.config import RunConfig
from polydistill.data import PromptRecord
from polydistill.evaluate import as_records, evaluate_model, exact_match
from polydistill.evaluate.graders import run_graders
from polydistill.evaluate.lm_harness import lm_eval_scores
from polydistill.inputs import StudentSource
from polydistill.processes import stop_workers
from polydistill.progress import console, progress_bars
from polydistill.student.batches import plan_batches
from polydistill.student.curve import CURVE_LOG, curve_hook, read_curve
from polydistill.student.export import export_student
from polydistill.student.on_policy import grading_teachers, mixed_batches, refresh_totals
from polydistill.student.plans import ModelPlan, student_fingerprint, trains_on_policy
from polydistill.student.prompts import Prompts
from polydistill.student.rows import DiskRows
from polydistill.teachers.protocol import release_weights
from polydistill.train import BatchFn, LossFn, train
from polydistill.train.checkpoint import list_checkpoints, read_state
from polydistill.train.loop import CHECKPOINTS_DIR, StepHook
from polydistill.train.reproducible import fixed_threads
from polydistill.train.selection import read_selection

FINAL_DIR = "final"


@dataclass(frozen=True)
class PlanJob:
    """One model to train: its plan, work folder and the folder of its training rows (None for
    the oracle, which reads gold answers; models that share rows share the folder)."""

    plan: ModelPlan
    work: Path
    rows: Path | None = None
    # Per tag, validation prompts with the answers the model is chosen by (`validate_every`).
    references: dict[str, list[PromptRecord]] | None = None


@dataclass(frozen=True)
class Stage:
    """What every job of a run shares: the student's source, its training prompts and the
    held-out records by tag (sent to each worker process once)."""

    source: StudentSource
    prompts: Prompts
    heldout: dict[str, list[PromptRecord]]
    # the teachers' checkpoints by name, for the models that grade their own samples with them
    teachers: Mapping[str, Path] = field(default_factory=dict)


def load_rows(job: PlanJob) -> DiskRows | None:
    """The job's rows, read from disk a batch at a time (`rows`)."""
    return None if job.rows is None else DiskRows(job.rows)


def train_model(
    cfg: RunConfig,
    source: StudentSource,
    plan: ModelPlan,
    batches: BatchFn,
    loss_fn: LossFn,
    work_dir: Path,
    on_step: Callable[[int, dict], None] | None = None,
    select_by: Callable[[PreTrainedModel], float] | None = None,
    model: PreTrainedModel | None = None,
) -> PreTrainedModel:
    """A fresh student (or `model`, built from `source` by the caller) trained by `loss_fn` on
    `batches`, resuming from `work_dir`; with `student.validate_every`, the weights `select_by`
    scores best (`train.selection`)."""
    s, t = cfg.student, cfg.student.train
    model = source.model(t.seed) if model is None else model
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
        fingerprint=student_fingerprint(cfg, source.identity, plan),
        on_step=on_step,
        select_every=s.validate_every,
        select_by=select_by,
    )
    model.eval()
    return model


def train_and_score_one(cfg: RunConfig, stage: Stage, job: PlanJob, on_step=None) -> dict:
    """Train one model (resuming from its work folder) on its fixed threads, save it to
    `work/final`, and return its held-out scores."""
    with fixed_threads(cfg.student.train.threads):
        return _train_and_score(cfg, stage, job, on_step)


def _train_and_score(cfg: RunConfig, stage: Stage, job: PlanJob, on_step) -> dict:
    tokenizer = stage.source.tokenizer()
    batches, loss_fn = plan_batches(cfg, job.plan, tokenizer, stage.prompts, load_rows(job))
    name, settings = job.plan.name, cfg.eval
    select_by = None
    if cfg.student.validate_every:
        if job.references is None:
            raise ValueError(f"{name}: validate_every is set but the job has no references")

        def select_by(model) -> float:
            agreement = exact_match(
                model, tokenizer, job.references, settings.max_new_tokens, settings.batch_size, name
            )
            return sum(agreement.values()) / len(agreement)

    model, teachers = None, []
    if trains_on_policy(cfg, job.plan) or cfg.student.heldout_every:
        model = stage.source.model(cfg.student.train.seed)
    if trains_on_policy(cfg, job.plan):
        teachers = grading_teachers(cfg, job.plan, stage.teachers)
        batches = mixed_batches(
            cfg, model, tokenizer, stage.prompts, teachers, batches, Path(job.work)
        )
    if cfg.student.heldout_every:
        on_step = heldout_curve(cfg, stage, job, model, tokenizer, on_step)
    try:
        model = train_model(
            cfg, stage.source, job.plan, batches, loss_fn, job.work, on_step, select_by, model
        )
    finally:
        for teacher in teachers:
            release_weights(teacher)
    result = export_and_score(cfg, stage, job, model, tokenizer)
    if select_by is not None:
        result["selection"] = chosen_checkpoint(job.work)
    if teachers:
        result["on_policy"] = refresh_totals(Path(job.work))
    if cfg.student.heldout_every:
        result["curve"] = read_curve(Path(job.work) / CURVE_LOG)
    return result


def heldout_curve(cfg, stage, job, model, tokenizer, then) -> StepHook:
    """The `on_step` hook that scores `model` on the held-out prompts every
    `student.heldout_every` steps (`student.curve`), then calls `then`."""
    settings, records = cfg.eval, as_records(stage.heldout)
    graders = run_graders(settings.graders)

    def score() -> dict[str, float]:
        return exact_match(
            model, tokenizer, records, settings.max_new_tokens, settings.batch_size,
            f"{job.plan.name} (curve)", graders=graders,
        )  # fmt: skip

    return curve_hook(score, cfg.student.heldout_every, Path(job.work) / CURVE_LOG, then)


def export_and_score(
    cfg: RunConfig,
    stage: Stage,
    job: PlanJob,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
) -> dict:
    """Save a trained model to `work/final` and return its held-out scores (graded by
    `eval.graders`; the student also by `eval.lm_eval_tasks`)."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    export_student(  # a standard checkpoint: transformers, vLLM and `polydistill serve` load it
        model,
        tokenizer,
        job.work / FINAL_DIR,
        chat_template=tokenizer.chat_template if chat else None,
        end_of_turn=tokenizer.eos_token,  # every answer was trained to end with it
    )
    settings, name = cfg.eval, job.plan.name
    result = evaluate_model(
        model, tokenizer, stage.heldout, settings.max_new_tokens, settings.batch_size, name,
        graders=run_graders(settings.graders),
    )  # fmt: skip
    if name == "student" and settings.lm_eval_tasks:
        result["lm_eval"] = lm_eval_scores(
            model, tokenizer, settings.lm_eval_tasks, settings.batch_size
        )
    return result


def chosen_checkpoint(work: Path) -> dict | None:
    """The step whose weights a finished run chose by validation, its score and every score
    (runs finished before `selection.json` existed have it only in their last checkpoint)."""
    selection = read_selection(work)
    if selection is None:
        found = list_checkpoints(work / CHECKPOINTS_DIR)
        selection = read_state(found[-1]).get("selection") if found else None
    if selection:
        console.log(f"{work.name}: chose step {selection['step']} ({selection['score']:.3f})")
    return selection


def worker_config(cfg: RunConfig) -> dict:
    """The run's config as a worker process re-validates it: only the fields set (a dump of
    every default would set `student.family` beside `student.init`, which validation refuses)."""
    return cfg.model_dump(mode="json", exclude_unset=True)


def _worker(spec: dict, stage: Stage, events) -> tuple[str, dict]:
    """Worker process: one job, with its steps reported through `events`."""
    cfg = RunConfig.model_validate(spec["run"])
    job = PlanJob(ModelPlan(**spec["plan"]), spec["work"], spec["rows"], spec["references"])
    name = job.plan.name

    def on_step(step: int, record: dict) -> None:
        events.put((name, step, record["tokens_per_s"]))

    return name, train_and_score_one(cfg, stage, job, on_step)


def worker_count(cfg: RunConfig, models: int) -> tuple[int, int]:
    """(workers, threads per worker) for `models` models on this run's cores; the threads are
    the models' own (`student.train.threads`), whatever the workers."""
    cores = cfg.threads or os.cpu_count() or 1
    threads = cfg.student.train.threads
    return max(1, min(models, cores // threads)), threads


def train_and_score(cfg: RunConfig, stage: Stage, jobs: list[PlanJob]) -> dict[str, dict]:
    """Every job's held-out scores, by model name, in the order of `jobs`."""
    workers, threads = worker_count(cfg, len(jobs))
    steps = cfg.student.train.steps
    scores: dict[str, dict] = {}
    with progress_bars() as bars:
        tasks = {
            j.plan.name: bars.add_task(f"train {j.plan.name}", total=steps, rate="") for j in jobs
        }

        def show(name: str, step: int, rate: float) -> None:
            bars.update(tasks[name], completed=step, rate=f"{rate:,.0f} tok/s")

        if workers == 1:
            for job in jobs:
                name = job.plan.name
                scores[name] = train_and_score_one(
                    cfg, stage, job, lambda s, r, n=name: show(n, s, r["tokens_per_s"])
                )
                console.log(f"{name}: accuracy {scores[name]['accuracy']}")
            return scores
        console.log(f"training {len(jobs)} models, {workers} at a time on {threads} thread(s) each")
        scores = _in_workers(cfg, stage, jobs, workers, show)
    return {j.plan.name: scores[j.plan.name] for j in jobs}


def _in_workers(cfg, stage, jobs, workers, show) -> dict[str, dict]:
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    events = manager.Queue()
    run_json = worker_config(cfg)
    scores: dict[str, dict] = {}
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        try:
            specs = [
                {
                    "run": run_json,
                    "plan": asdict(j.plan),
                    "work": j.work,
                    "rows": j.rows,
                    "references": j.references,
                }
                for j in jobs
            ]
            pending = {pool.submit(_worker, spec, stage, events) for spec in specs}
            while pending:
                while not events.empty():
                    show(*events.get())
                for future in [f for f in pending if f.done()]:
                    pending.discard(future)
                    name, result = future.result()
                    scores[name] = result
                    console.log(f"{name}: accuracy {result['accuracy']}")
                time.sleep(0.2)
        except BaseException:
            stop_workers(pool)
            raise
        finally:
            manager.shutdown()
    return scores
