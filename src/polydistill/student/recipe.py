"""The student stage of `polydistill run`, in the order it runs.

    results, works = distil_and_evaluate(cfg, inputs, sets, out, staging, gate)

1. Prompts (`prompts.prompt_sets`, read by the pipeline): the train split's prompts of the
   student's tags (never their references), the validation split's, the test split's by tag.
2. Readings (`readings`): every teacher answers and scores every training prompt once (and
   every validation prompt, with `student.validate_every`).
3. Per model to train (`plans`: the student, then each baseline of `benchmark.baselines`): its
   fusion weighs the teachers, picks each prompt's answer, and the teachers' readings of it are
   projected into the student's vocabulary (once per answer for all models) and fused
   (`targets`); or, for `seqkd` and the oracle, fine-tuning rows. The rows go to a folder in the
   model's work folder, chunk by chunk: a store is read a block at a time, so that neither the
   readings nor the rows of every prompt are ever in memory together (`rows`).
4. Train and evaluate (`workers`): each model is built from the student's source, trained on
   its batches (`batches`) by its loss (`loss`), resuming from its work folder, and scored on the
   held-out records, side by side in worker processes when there are cores for it; under
   torchrun, by every rank together, rank 0 scoring (`distributed`). With `student.on_policy`,
   the student (and its leave-one-out copies) also trains on its own samples, graded by its
   teachers in its worker (`on_policy`).
5. The student is copied to `staging/student` with its signed lineage, who supplied its targets
   to `contributions.json`, every model's training log to `train_logs/`.
"""

import hashlib
import json
import shutil
from pathlib import Path

from polydistill.config import RunConfig
from polydistill.errors import UserError
from polydistill.inputs import RunInputs
from polydistill.lineage.policy import Gate
from polydistill.lineage.write import write_student_lineage
from polydistill.store.manifest import prompts_hash
from polydistill.student.distributed import train_and_score_over_ranks
from polydistill.student.on_policy import REFRESH_LOG
from polydistill.student.plans import (
    model_plans,
    model_work_dir,
    reads_gold,
    validation_references,
)
from polydistill.student.prompts import PromptSets, as_prompts
from polydistill.student.readings import reading_chunks, student_teachers, teacher_readings
from polydistill.student.rows import EXAMPLES_FILE, ROWS_DIR, write_accounts, write_plan_rows
from polydistill.student.workers import FINAL_DIR, PlanJob, Stage, train_and_score
from polydistill.train.distributed import current_ranks
from polydistill.train.log import LOG_FILE, TENSORBOARD_DIR


def keep_train_log(work: Path, staging: Path, name: str) -> None:
    """The model's `train_log.jsonl` (with its on-policy refreshes, and TensorBoard folder)
    into `staging/train_logs/`."""
    logs = staging / "train_logs"
    logs.mkdir(exist_ok=True)
    label = name.replace(":", "__")
    if (work / LOG_FILE).is_file():
        shutil.copy2(work / LOG_FILE, logs / f"{label}.jsonl")
    if (work / REFRESH_LOG).is_file():
        shutil.copy2(work / REFRESH_LOG, logs / f"{label}.on_policy.jsonl")
    if (work / TENSORBOARD_DIR).is_dir():
        shutil.copytree(work / TENSORBOARD_DIR, logs / f"{label}.tensorboard")


def distil_and_evaluate(
    cfg: RunConfig, inputs: RunInputs, sets: PromptSets, out: Path, staging: Path, gate: Gate
) -> tuple[dict, list[Path]]:
    """Train and score the student and the baselines; returns their metrics and work folders."""
    plans = model_plans(cfg)
    if any(reads_gold(p) for p in plans) and None in sets.train.gold:
        names = ", ".join(p.name for p in plans if reads_gold(p))
        raise UserError(f"{names}: read reference answers, and some training prompts have none")
    source, prompts = inputs.student, sets.train
    tokenizer = source.tokenizer()
    # 2. readings: every teacher, once (from a store: block by block, as step 3 reads them)
    teachers = student_teachers(cfg, inputs.teachers, gate.policy and gate.policy.digest)
    chunks = reading_chunks(cfg, teachers, prompts)
    if cfg.student.validate_every:
        checking = as_prompts(sets.validation)
        checked = teacher_readings(cfg, teachers, checking)
    # 3. per model: its rows, written once per distinct fusion (seqkd shares the student's)
    works = {plan.name: model_work_dir(out, cfg, source.identity, plan) for plan in plans}
    folders, fused = {}, {}
    for plan in plans:
        if plan.sft != "gold":
            key = (plan.strategy, json.dumps(plan.fixed, sort_keys=True), plan.without)
            folders.setdefault(key, (works[plan.name] / ROWS_DIR, plan))
            fused[plan.name] = folders[key][0]
    tallies = write_plan_rows(cfg, dict(folders.values()), teachers, tokenizer, chunks)
    accounts = tallies[fused["student"]].accounts(plans[0].strategy)
    jobs = []
    for plan in plans:
        references = None
        if cfg.student.validate_every:
            references = validation_references(
                cfg, plan, teachers, sets.validation, checking, checked
            )
        jobs.append(PlanJob(plan, works[plan.name], fused.get(plan.name), references))
    # 4. train and evaluate every model (over the ranks when torchrun started the run)
    trainer = train_and_score_over_ranks if current_ranks() else train_and_score
    results = trainer(cfg, Stage(source, prompts, sets.heldout, inputs.teachers), jobs)
    # 5. the student, its lineage and the logs into the output
    for job in jobs:
        keep_train_log(job.work, staging, job.plan.name)
    shutil.copytree(jobs[0].work / FINAL_DIR, staging / "student")
    if cfg.benchmark and cfg.benchmark.keep_models:  # else they go with their work folders
        for job in jobs[1:]:
            name = job.plan.name.removeprefix("baseline:").replace(":", "-")
            shutil.copytree(job.work / FINAL_DIR, staging / "models" / name)
    examples = fused["student"].parent / EXAMPLES_FILE
    write_accounts(staging / "contributions.json", accounts, examples)
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
