"""On-policy / mixed distillation in `polydistill run` (`student.on_policy`), in a model's worker.

    if trains_on_policy(cfg, plan):  # the student and its leave-one-out copies
        teachers = grading_teachers(cfg, plan, stage.teachers)      # loaded when first asked
        batches = mixed_batches(cfg, model, tokenizer, prompts, teachers, batches, work)
        ...train...; totals = refresh_totals(work)                  # into the model's metrics

The student (and each `leave_one_out` baseline, which is the student's recipe without one
teacher, so it learns the same way from the teachers it keeps) trains on
`onpolicy.on_policy_batches`: a fraction `mix` of its steps on its own samples, graded by its
teachers through the `Teacher` protocol and fused by the student's fusion strategy; the other
steps on the off-policy batches the recipe built. The other baselines stay off-policy: they
are the references the student is measured against.

The teachers are built in the worker from their checkpoints and stay loaded while the model
trains (a refresh every `buffer_steps` steps asks each of them), then are released. Every block's
graded rows are saved in the work folder (`BUFFER_DIR`), so a resumed run trains on exactly the
rows the killed one had; every refresh appends its stats to `REFRESH_LOG` (kept with the train
logs), which also gives the totals of a resumed run.
"""

import json
from collections.abc import Mapping
from pathlib import Path

from transformers import PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from polydistill.config import RunConfig
from polydistill.onpolicy import Grading, OnPolicyRun, is_on_policy, on_policy_batches, warm_start
from polydistill.progress import console
from polydistill.student.plans import ModelPlan
from polydistill.student.prompts import Prompts
from polydistill.student.readings import student_teachers
from polydistill.teachers.protocol import Teacher
from polydistill.train import BatchFn

BUFFER_DIR = "on_policy_buffer"
REFRESH_LOG = "on_policy.jsonl"
COUNTED = ("samples", "retokenised", "truncated", "teacher_calls")


def grading(cfg: RunConfig) -> Grading:
    """The student's fusion settings, as the on-policy grading applies them."""
    fusion = cfg.student.fusion
    return Grading(fusion.strategy, fusion.temperature, fusion.weights or {}, fusion.routes or {})


def grading_teachers(cfg: RunConfig, plan: ModelPlan, paths: Mapping[str, Path]) -> list[Teacher]:
    """The plan's teachers as live checkpoints (`paths` by name), without the one it leaves out;
    their weights load at the first refresh. Live with a `student.store` too: the store holds
    the teachers' readings of their own answers (whose fingerprints it checked against these
    checkpoints), never of the student's samples."""
    live = cfg.model_copy(update={"student": cfg.student.model_copy(update={"store": None})})
    return [t for t in student_teachers(live, paths) if t.name != plan.without]


def _first_on_policy_step(block: int, buffer_steps: int, mix: float) -> int:
    first = block * buffer_steps
    return next(s for s in range(first, first + buffer_steps) if is_on_policy(s, mix))


def mixed_batches(
    cfg: RunConfig,
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    prompts: Prompts,
    teachers: list[Teacher],
    off_policy: BatchFn,
    work: Path,
) -> BatchFn:
    """`batch_at` of the plan: `off_policy` mixed with the student's graded samples (see the
    module); applies `warm_start` to `model` (a resumed run then loads its checkpoint over it)."""
    settings, train = cfg.student.on_policy, cfg.student.train
    if settings.warm_start is not None:
        warm_start(model, settings.warm_start)
    run = OnPolicyRun(
        model, tokenizer, teachers, prompts.texts, settings, grading(cfg), prompts.tags
    )
    log = work / REFRESH_LOG

    def on_refresh(block: int, stats: dict) -> None:
        step = _first_on_policy_step(block, settings.buffer_steps, settings.mix) + 1
        with log.open("a", encoding="utf-8") as file:
            file.write(json.dumps({"block": block, "step": step, **stats}) + "\n")
        counts = ", ".join(f"{stats[k]} {k.replace('_', ' ')}" for k in COUNTED)
        console.log(f"on-policy refresh {block} at step {step}: {counts}")

    # with length buckets a step is `buckets` micro-batches: the on-policy step's rows are split
    # the same way, so that it sees about as many rows as an off-policy step
    return on_policy_batches(
        run,
        batch_size=max(1, train.batch_size // train.buckets),
        accumulation_steps=train.buckets,
        off_policy=off_policy,
        buffer_dir=work / BUFFER_DIR,
        on_refresh=on_refresh,
    )


def refresh_totals(work: Path) -> dict[str, int]:
    """Refreshes and the sums of `COUNTED` over them, from `REFRESH_LOG` (a block logged twice,
    by a run killed before its buffer was saved and by the resumed one, counts once)."""
    log = work / REFRESH_LOG
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    blocks = {record["block"]: record for record in map(json.loads, lines)}
    totals = {k: sum(r[k] for r in blocks.values()) for k in COUNTED}
    return {"refreshes": len(blocks), **totals}
