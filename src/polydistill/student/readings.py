"""The student's teachers and their readings: every teacher answers and scores every prompt once.

    teachers = student_teachers(cfg, inputs.teachers, policy)   # live, or from `student.store`
    readings = teacher_readings(cfg, teachers, prompts)

Every teacher answers every prompt `completions_per_prompt` times (greedily, then sampled), and
every teacher scores every distinct answer in its own tokenizer and chat template
(`teachers.readings`). With `student.store`, no teacher model is loaded: the readings come from
the captured store, whose fingerprints must match the checkpoints', and `reading_chunks` reads
them a store block at a time (live teachers answer all prompts at once: their sampling and
batching depend on the prompts asked together).
"""

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from rich.progress import Progress as Bars

from polydistill.config import RunConfig
from polydistill.progress import console, progress_bars
from polydistill.store.blocks import block_readings
from polydistill.store.cached import StoreTeacher, open_store, store_teachers
from polydistill.student.prompts import Prompts, prompts_slice
from polydistill.teachers.from_config import teacher_fingerprint, teacher_from_config
from polydistill.teachers.protocol import Progress, Teacher
from polydistill.teachers.readings import Readings, gather_readings


def student_teachers(
    cfg: RunConfig, paths: Mapping[str, Path], policy: str | None = None
) -> list[Teacher]:
    """The student's teachers (checkpoints by name in `paths`): live checkpoints, or their
    captured readings (`student.store`, captured under the teacher policy whose digest is
    `policy`)."""
    configs = {t.name: t for t in cfg.teachers}
    names = cfg.student.teachers
    if cfg.student.store is None:
        return [
            teacher_from_config(configs[n], batch_size=cfg.eval.batch_size, checkpoint=paths.get(n))
            for n in names
        ]
    expected = {n: teacher_fingerprint(configs[n], checkpoint=paths.get(n)) for n in names}
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
    """Every teacher's answers to `prompts` and every teacher's scores of every answer."""
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


def reading_chunks(
    cfg: RunConfig, teachers: list[Teacher], prompts: Prompts
) -> Iterator[tuple[int, Prompts, Readings]]:
    """(first prompt, the chunk's prompts, their readings): one chunk of every prompt from live
    teachers (`teacher_readings`), one per block from a store (`store.blocks`)."""
    if not all(isinstance(t, StoreTeacher) for t in teachers):
        yield 0, prompts, teacher_readings(cfg, teachers, prompts)
        return
    s = cfg.student
    blocks = block_readings(
        teachers, prompts.texts, samples=s.completions_per_prompt,
        max_new_tokens=cfg.eval.max_new_tokens, seed=s.train.seed, top_k=s.top_k,
        temperature=s.temperature,
    )  # fmt: skip
    with progress_bars() as bars:
        task = bars.add_task("student: store blocks", total=len(prompts.texts), rate="")
        for first, readings in blocks:
            count = len(readings.candidates_of)
            yield first, prompts_slice(prompts, first, first + count), readings
            bars.update(task, advance=count)
    console.log(f"student: {len(prompts.texts)} prompts read from the store block by block")
