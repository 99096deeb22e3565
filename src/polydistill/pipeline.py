"""`polydistill run`: the main job, top to bottom, on plain inputs.

    metrics = run(cfg, out, inputs)    # inputs: `polydistill.inputs.RunInputs`

0. Check every teacher against the run's policy (`lineage.policy`: licence, origin, ...) before
   anything is loaded, and every checkpoint's tokenizer, so that a bad path fails at once. A
   teacher the policy excludes is never loaded, called or read from a store. (`check_run`; the
   caller runs it before it resolves the inputs too.)
1. Read the prompt records once (`student.prompts.prompt_sets`): prompts longer than a teacher's
   or the student's context are dropped and counted (`data.ContextLimit`).
2. Evaluate every teacher on every held-out tag (the test split).
3. With a `student:` section: the student stage (`student.recipe`): readings, targets,
   training and evaluation of the student and each baseline; the student lands in `student/`
   as a standard checkpoint with its signed lineage.
4. Write `metrics.json` (with the prompt set's counts under `data`), the resolved config, where
   the inputs came from (`inputs.json`; `world.json` for the world), and the report.

The output folder is assembled in a temporary sibling and renamed into place at the end, so a
failed or interrupted run leaves no half-written folder and never touches an earlier result
unless `force` is given (then the old folder is replaced only once the new one is complete).
"""

import json
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import yaml
from rich.progress import Progress
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from polydistill.config import EvalConfig, RunConfig, StudentInit, TeacherConfig, WorldData
from polydistill.data import ContextLimit, DataSummary, PromptRecord
from polydistill.errors import UserError
from polydistill.evaluate import evaluate_model
from polydistill.evaluate.graders import run_graders
from polydistill.evaluate.prompts import encode_records
from polydistill.inputs import FilePrompts, RunInputs
from polydistill.lineage.policy import Gate, run_gate
from polydistill.progress import console, progress_bars
from polydistill.report import write_report
from polydistill.staging import staged_folder
from polydistill.store.cached import check_store_policy
from polydistill.student.init import CheckpointStudent
from polydistill.student.prompts import prompt_sets
from polydistill.student.recipe import distil_and_evaluate
from polydistill.teachers import load_checkpoint, load_tokenizer
from polydistill.teachers.checkpoint import DTYPES, is_gguf
from polydistill.teachers.from_config import served_from_config


def check_output(out: Path, force: bool) -> None:
    """An existing, non-empty `out` is replaced only with `force`."""
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(
            f"output folder {out} already exists and is not empty; pass --force to replace it"
        )


@contextmanager
def staged_output(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder that becomes `out` only if the block completes."""
    check_output(out, force)
    with staged_folder(out, replace=True) as staging:
        yield staging


def check_run(cfg: RunConfig, out: Path, force: bool) -> Gate:
    """The output folder, the policy gate (files only), the store's policy, and every checkpoint
    teacher's tokenizer: what can fail before anything is built or loaded."""
    check_output(out, force)
    gate = run_gate(cfg)  # reads files only: no teacher is loaded before the policy allows it
    cfg = gate.config
    if cfg.student is not None and cfg.student.store is not None:
        check_store_policy(cfg.student.store, gate.policy and gate.policy.digest)
    run_graders(cfg.eval.graders)  # a bad graders file fails now, not after training
    for teacher in cfg.teachers:
        if teacher.path is not None and teacher.name not in gate.excluded:  # fail fast
            load_tokenizer(teacher.path, f"teacher {teacher.name!r}", teacher.template)
    return gate


def _token_counter(tokenizer: PreTrainedTokenizerBase, who: str):
    return lambda record: len(encode_records(tokenizer, [record], who)[0])


def _positions(path: Path) -> int | None:
    """A checkpoint's context length from its config (None when it states none)."""
    folder, extra = (path.parent, {"gguf_file": path.name}) if is_gguf(path) else (path, {})
    config = AutoConfig.from_pretrained(folder, **extra)
    return getattr(config, "max_position_embeddings", None)


def context_limits(
    cfg: RunConfig, inputs: RunInputs, excluded: frozenset[str]
) -> dict[str, ContextLimit]:
    """Per model (each teacher, the student): its prompt length and the most prompt tokens it
    takes, its context less the `eval.max_new_tokens` its answer needs. Counting renders every
    record, so a prompt a model cannot read (a conversation for a completion model, a turn its
    template refuses) fails here, naming the record, before any model is loaded. A served
    teacher's context is the least its servers state (`/v1/models`); a checkpoint, or servers,
    stating none are only checked so."""
    room = cfg.eval.max_new_tokens
    limits: dict[str, ContextLimit] = {}
    for teacher in (t for t in cfg.teachers if t.name not in excluded):
        who = f"teacher {teacher.name!r}"
        if teacher.served is not None:  # its servers asked now, before any model loads
            limits[teacher.name] = _served_limit(teacher, room)
            continue
        if teacher.name not in inputs.teachers:
            continue
        path = inputs.teachers[teacher.name]
        positions = _positions(path)
        limit = sys.maxsize if positions is None else positions - room
        tokenizer = load_tokenizer(path, who, teacher.template)
        limits[teacher.name] = ContextLimit(_token_counter(tokenizer, who), limit)
    if cfg.student is not None:
        tokenizer = inputs.student.tokenizer()
        limits["student"] = ContextLimit(
            _token_counter(tokenizer, "student"), inputs.student.max_positions() - room
        )
    return limits


def _served_limit(teacher: TeacherConfig, room: int) -> ContextLimit:
    """A served teacher's limit: its servers checked (model, tokenizer) and asked their context;
    its prompts are counted with its local tokenizer. A server stating no context is left to
    refuse a prompt longer than its context itself."""
    served = served_from_config(teacher)
    try:
        context = served.context_length()
    finally:
        served.close()
    limit = sys.maxsize if context is None else context - room
    return ContextLimit(_token_counter(served.tokenizer, served.who), limit)


def evaluate_with_progress(
    bars: Progress,
    label: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    heldout: Mapping[str, list[PromptRecord]],
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
        model, tokenizer, heldout, settings.max_new_tokens, settings.batch_size, who, advance,
        graders=run_graders(settings.graders),
    )  # fmt: skip


def evaluate_teachers(
    cfg: RunConfig,
    inputs: RunInputs,
    heldout: Mapping[str, list[PromptRecord]],
    excluded: frozenset[str] = frozenset(),
) -> dict[str, dict]:
    """Every allowed teacher's held-out scores, by `teacher:<name>`."""
    results: dict[str, dict] = {}
    with progress_bars() as bars:
        for teacher in (t for t in cfg.teachers if t.name not in excluded):
            if teacher.name not in inputs.teachers:
                continue  # a served teacher is read, not scored here (its server is scored)
            who = f"teacher {teacher.name!r}"
            dtype = DTYPES[teacher.dtype]
            path = inputs.teachers[teacher.name]
            model, tokenizer = load_checkpoint(path, who, dtype, teacher.template)
            label = f"teacher:{teacher.name}"
            results[label] = evaluate_with_progress(
                bars, label, model, tokenizer, heldout, cfg.eval, who
            )
    return results


def file_inputs(cfg: RunConfig) -> RunInputs:
    """The inputs of a run that names all of them itself: checkpoint or served teachers, prompt
    files (`data:`) and a student to start from (`student.init`)."""
    if cfg.student is None or cfg.student.init is None or isinstance(cfg.data, WorldData):
        raise ValueError("file_inputs needs data: files and student.init")
    return RunInputs(
        teachers={t.name: t.path for t in cfg.teachers if t.path is not None},
        student=CheckpointStudent(cfg.student.init),
        prompts=FilePrompts(cfg.data),
        about=init_about(cfg.student.init),
    )


def init_about(init: StudentInit) -> dict[str, str]:
    """What `inputs.json` records of a student started from `init`."""
    return {
        "student_init": init.model_dump_json(exclude_none=True),
        "student": CheckpointStudent(init).identity,
    }


def run(cfg: RunConfig, out: Path, inputs: RunInputs, force: bool = False) -> dict:
    """The whole job; returns the metrics written to `out/metrics.json`."""
    gate = check_run(cfg, out, force)
    cfg, excluded = gate.config, frozenset(gate.excluded)
    summary = DataSummary()
    limits = context_limits(cfg, inputs, excluded)
    sets = prompt_sets(cfg, inputs.prompts.records(limits, summary))
    console.log(f"prompts: {summary.describe()}")
    works: list[Path] = []
    with staged_output(out, force) as staging:
        metrics = {
            "domains": list(sets.heldout),  # the test split's tags (the report's rows)
            "data": summary.metrics(),
            "models": evaluate_teachers(cfg, inputs, sets.heldout, excluded),
        }
        if cfg.student is not None:
            trained, works = distil_and_evaluate(cfg, inputs, sets, out, staging, gate)
            metrics["models"].update(trained)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (staging / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
        (staging / "inputs.json").write_text(json.dumps(dict(inputs.about), indent=2))
        if "world" in inputs.about:
            (staging / "world.json").write_text(
                json.dumps({"root": inputs.about["world"]}, indent=2)
            )
        write_report(staging, run_name=out.name)
    for work in works:  # the models are in `out` now; their training checkpoints are spent
        shutil.rmtree(work, ignore_errors=True)
    console.log(f"wrote {out / 'metrics.json'}")
    return metrics
