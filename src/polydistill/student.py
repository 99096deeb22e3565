"""The student stage of `polydistill run`: distil the configured student from its teacher.

    work = student_work_dir(out, cfg, world)
    model, tokenizer = distil_student(cfg, world, work, out / "student")

The teacher (a world teacher or a checkpoint) and the student's world tokenizer must be the same
tokenizer. The training prompts of the student's domains (never their answers) are encoded
through the chat template; the teacher completes them and gives its targets (`distill`); a fresh
student of `student.family` is trained on them with the chunked distillation loss and saved to
the final folder as a standard checkpoint with its tokenizer and chat template.

Training checkpoints and `train_log.jsonl` go to the work folder, a hidden sibling of the output
folder named after a hash of everything that shapes the student, so a killed run started again
with the same config resumes from its last checkpoint (and a changed config starts afresh).
"""

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

from rich.progress import Progress as Bars
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from polydistill.chat import encode_prompts
from polydistill.config import RunConfig
from polydistill.distill import (
    DistillationData,
    Progress,
    check_same_tokenizer,
    distillation_batches,
    distillation_data,
    distillation_loss,
)
from polydistill.progress import console, progress_bars
from polydistill.teachers import load_checkpoint
from polydistill.train import train
from polydistill.train.checkpoint import list_checkpoints, save_final
from polydistill.train.loop import CHECKPOINTS_DIR
from polydistill.world.architectures import build_model
from polydistill.world.build import World
from polydistill.world.domains import Example


def student_prompts(train_split: dict[str, list[Example]], domains: Sequence[str]) -> list[str]:
    """The prompts the student learns from: the training prompts of its domains, in order."""
    return [e.prompt for d in domains for e in train_split[d]]


def student_fingerprint(cfg: RunConfig, world: World) -> dict:
    """Everything that shapes the student: compared on resume, hashed into the work folder."""
    student = cfg.student
    teacher = next(t for t in cfg.teachers if t.name == student.teacher)
    return {
        "world": world.root.name,
        "teacher": teacher.model_dump(mode="json"),
        "student": student.model_dump(mode="json"),
        "generation": {"max_new_tokens": cfg.eval.max_new_tokens, "batch": cfg.eval.batch_size},
    }


def student_work_dir(out: Path, cfg: RunConfig, world: World) -> Path:
    text = json.dumps(student_fingerprint(cfg, world), sort_keys=True)
    return out.parent / f".{out.name}.student-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _rate_task(bars: Bars, description: str, total: int) -> Progress:
    """A bar counting rows, showing tokens per second."""
    task = bars.add_task(description, total=total, rate="")
    started, tokens = time.perf_counter(), 0

    def advance(rows: int, new_tokens: int) -> None:
        nonlocal tokens
        tokens += new_tokens
        rate = tokens / max(time.perf_counter() - started, 1e-9)
        bars.update(task, advance=rows, rate=f"{rate:,.0f} tok/s")

    return advance


def student_data(cfg: RunConfig, world: World) -> tuple[DistillationData, PreTrainedTokenizerBase]:
    """The student's training rows and targets from its teacher, and the student's tokenizer."""
    s = cfg.student
    teacher_path = next(t.path for t in cfg.teachers if t.name == s.teacher)
    who = f"teacher {s.teacher!r}"
    teacher, teacher_tokenizer = load_checkpoint(teacher_path or world.teachers[s.teacher], who)
    tokenizer = AutoTokenizer.from_pretrained(world.tokenizer_dir(s.tokenizer))
    check_same_tokenizer(teacher_tokenizer, tokenizer, who)
    prompt_ids = encode_prompts(tokenizer, student_prompts(world.train, s.domains), "student")
    rows = len(prompt_ids) * s.completions_per_prompt
    with progress_bars() as bars:
        data = distillation_data(
            teacher,
            tokenizer,
            prompt_ids,
            top_k=s.top_k,
            temperature=s.temperature,
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.batch_size,
            samples=s.completions_per_prompt,
            seed=s.train.seed,
            on_completions=_rate_task(bars, f"completions {s.teacher}", rows),
            on_targets=_rate_task(bars, f"targets {s.teacher} top-{s.top_k}", rows),
        )
    console.log(
        f"student: {len(data)} rows, {len(data.targets)} target positions from {who} "
        f"on {', '.join(s.domains)}"
    )
    return data, tokenizer


def distil_student(
    cfg: RunConfig, world: World, work_dir: Path, final_dir: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Distil, train (resuming from `work_dir` when it holds this config's checkpoints) and save
    the student to `final_dir`; returns it, in evaluation mode, with its tokenizer."""
    s, t = cfg.student, cfg.student.train
    data, tokenizer = student_data(cfg, world)
    model = build_model(s.family, s.model, tokenizer, t.seed)
    found = list_checkpoints(work_dir / CHECKPOINTS_DIR)
    if found:
        console.log(f"student: resuming from {found[-1]}")
    with progress_bars() as bars:
        task = bars.add_task(f"distil student ({s.family})", total=t.steps, rate="")

        def on_step(step: int, record: dict) -> None:
            bars.update(task, completed=step, rate=f"{record['tokens_per_s']:,.0f} tok/s")

        train(
            model,
            distillation_batches(data, tokenizer.pad_token_id, t.batch_size, t.seed),
            distillation_loss(s.loss, s.beta, s.temperature, s.ce_weight, len(tokenizer)),
            **t.loop_arguments(),
            run_dir=work_dir,
            checkpoint_every=s.checkpoint_every,
            resume=s.checkpoint_every > 0,
            fingerprint=student_fingerprint(cfg, world),
            on_step=on_step,
        )
    save_final(model, tokenizer, final_dir)
    return model, tokenizer
