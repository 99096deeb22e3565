"""`polydistill run`: the main job, top to bottom.

0. Check every teacher against the run's policy (`lineage.policy`: licence, origin, ...) before
   anything is loaded, and every real checkpoint's tokenizer, so that a bad path fails at once.
   A teacher the policy excludes is never loaded, called or read from a store.
1. Build (or reuse) the world: domain data, tokenizers, world teachers.
2. Evaluate every teacher (world-trained or a real local checkpoint) on every held-out domain.
3. With a `student:` section: every teacher answers and scores the student's prompts once
   (`student.teacher_readings`); then the student and each baseline of `benchmark:` are trained
   on their fused targets (`student`), evaluated like the teachers, and their training logs kept
   in `train_logs/`. The student is saved to `student/` as a standard checkpoint with its
   signed lineage (`lineage.write`: `lineage.json` with its teachers' facts, fingerprints and
   shares, the policy, data and config hashes; `bom.cdx.json`, `NOTICE`, the model card
   `README.md`), and who supplied its targets to `contributions.json`.
4. Write `metrics.json`, the resolved config and the world's location into the output folder,
   and the report (`report.html`).

The output folder is assembled in a temporary sibling and renamed into place at the end, so a
failed or interrupted run leaves no half-written folder and never touches an earlier result
unless `force` is given (then the old folder is replaced only once the new one is complete).
"""

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from rich.progress import Progress
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polydistill import student, student_runs
from polydistill.config import EvalConfig, RunConfig
from polydistill.errors import UserError
from polydistill.evaluate import evaluate_model
from polydistill.lineage.policy import Gate, run_gate
from polydistill.lineage.write import write_student_lineage
from polydistill.progress import console, progress_bars
from polydistill.report import write_report
from polydistill.staging import staged_folder
from polydistill.store.cached import check_store_policy
from polydistill.store.manifest import prompts_hash
from polydistill.teachers import load_checkpoint, load_tokenizer
from polydistill.teachers.checkpoint import DTYPES
from polydistill.train.log import LOG_FILE, TENSORBOARD_DIR
from polydistill.world.build import World, build_world
from polydistill.world.domains import DOMAINS


@contextmanager
def staged_output(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder that becomes `out` only if the block completes."""
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(
            f"output folder {out} already exists and is not empty; pass --force to replace it"
        )
    with staged_folder(out, replace=True) as staging:
        yield staging


def heldout_sets(world: World, limit: int | None) -> dict:
    return {d: world.heldout[d][:limit] if limit else world.heldout[d] for d in DOMAINS}


def evaluate_with_progress(
    bars: Progress,
    label: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    heldout: dict,
    settings: EvalConfig,
    who: str,
) -> dict:
    """`evaluate_model` with a bar counting examples per second."""
    total = sum(len(v) for v in heldout.values())
    task = bars.add_task(f"evaluate {label}", total=total, rate="")
    started = time.perf_counter()

    def advance(n: int) -> None:
        bars.advance(task, n)
        done = bars.tasks[task].completed
        bars.update(task, rate=f"{done / (time.perf_counter() - started):,.1f} ex/s")

    return evaluate_model(
        model, tokenizer, heldout, settings.max_new_tokens, settings.batch_size, who, advance
    )


def evaluate_teachers(
    cfg: RunConfig, world: World, excluded: frozenset[str] = frozenset()
) -> dict[str, dict]:
    heldout = heldout_sets(world, cfg.eval.heldout_limit)
    results: dict[str, dict] = {}
    with progress_bars() as bars:
        for teacher in (t for t in cfg.teachers if t.name not in excluded):
            who = f"teacher {teacher.name!r}"
            path = teacher.path or world.teachers[teacher.name]
            dtype = DTYPES[teacher.dtype]
            model, tokenizer = load_checkpoint(path, who, dtype, teacher.template)
            label = f"teacher:{teacher.name}"
            results[label] = evaluate_with_progress(
                bars, label, model, tokenizer, heldout, cfg.eval, who
            )
    return results


def keep_train_log(work: Path, staging: Path, name: str) -> None:
    """The model's `train_log.jsonl` (and TensorBoard folder) into `staging/train_logs/`."""
    logs = staging / "train_logs"
    logs.mkdir(exist_ok=True)
    label = name.replace(":", "__")
    if (work / LOG_FILE).is_file():
        shutil.copy2(work / LOG_FILE, logs / f"{label}.jsonl")
    if (work / TENSORBOARD_DIR).is_dir():
        shutil.copytree(work / TENSORBOARD_DIR, logs / f"{label}.tensorboard")


def distil_and_evaluate(
    cfg: RunConfig, world: World, out: Path, staging: Path, gate: Gate
) -> tuple[dict, list[Path]]:
    """Train and score the student and the baselines; returns their metrics and work folders."""
    tokenizer = student.student_tokenizer(cfg, world)
    prompts = student.student_prompts(cfg, world)
    teachers = student.student_teachers(cfg, world, gate.policy and gate.policy.digest)
    readings = student.teacher_readings(cfg, teachers, prompts)
    if cfg.student.validate_every:
        checking = student.validation_prompts(cfg, world)
        checked = student.teacher_readings(cfg, teachers, checking)
    jobs, fused, projections, accounts = [], {}, {}, None
    for plan in student.model_plans(cfg):
        work, rows_file = student.model_work_dir(out, cfg, world, plan), None
        if plan.sft != "gold":
            key = (plan.strategy, json.dumps(plan.fixed, sort_keys=True), plan.without)
            if key not in fused:  # e.g. seqkd trains on the student's rows: written once
                rows, plan_accounts = student.plan_data(
                    cfg, plan, teachers, tokenizer, prompts, readings, projections
                )
                student_runs.save_rows(rows, work / student_runs.ROWS_FILE)
                fused[key] = (work / student_runs.ROWS_FILE, plan_accounts)
            rows_file, plan_accounts = fused[key]
            accounts = plan_accounts if plan.name == "student" else accounts
        references = None
        if cfg.student.validate_every:
            references = student.validation_references(cfg, plan, teachers, checking, checked)
        jobs.append(student_runs.PlanJob(plan, work, rows_file, references))
    del projections, readings  # the workers read their rows from the files
    heldout = heldout_sets(world, cfg.eval.heldout_limit)
    results = student_runs.train_and_score(cfg, world, jobs, heldout)
    for job in jobs:
        keep_train_log(job.work, staging, job.plan.name)
    shutil.copytree(jobs[0].work / student_runs.FINAL_DIR, staging / "student")
    (staging / "contributions.json").write_text(json.dumps(accounts, indent=1))
    write_student_lineage(  # signed, bound to the weights now in staging/student
        gate,
        accounts,
        staging / "student",
        fingerprints={t.name: t.fingerprint() for t in teachers},
        prompts={"count": len(prompts.texts), "sha256": prompts_hash(prompts.texts)},
        config_sha256=hashlib.sha256(cfg.model_dump_json().encode()).hexdigest(),
        accuracy=results["student"]["accuracy"],
    )
    return results, [job.work for job in jobs]


def run(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    """The whole job; returns the metrics written to `out/metrics.json`."""
    gate = run_gate(cfg)  # reads files only: no teacher is loaded before the policy allows it
    cfg = gate.config
    if cfg.student is not None and cfg.student.store is not None:
        check_store_policy(cfg.student.store, gate.policy and gate.policy.digest)
    for teacher in cfg.teachers:
        if teacher.path is not None and teacher.name not in gate.excluded:  # fail fast
            load_tokenizer(teacher.path, f"teacher {teacher.name!r}", teacher.template)
    works: list[Path] = []
    with staged_output(out, force) as staging:
        world = build_world(cfg)
        metrics = {
            "domains": list(DOMAINS),
            "models": evaluate_teachers(cfg, world, frozenset(gate.excluded)),
        }
        if cfg.student is not None:
            trained, works = distil_and_evaluate(cfg, world, out, staging, gate)
            metrics["models"].update(trained)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (staging / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
        (staging / "world.json").write_text(
            json.dumps({"root": str(world.root.resolve())}, indent=2)
        )
        write_report(staging, run_name=out.name)
    for work in works:  # the models are in `out` now; their training checkpoints are spent
        shutil.rmtree(work, ignore_errors=True)
    console.log(f"wrote {out / 'metrics.json'}")
    return metrics
