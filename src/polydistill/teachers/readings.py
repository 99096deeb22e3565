"""Every teacher's answers to the prompts, and every teacher's reading of every answer.

    readings = gather_readings(teachers, prompts, samples=1, max_new_tokens=24, seed=0,
                               top_k=32, temperature=1.0)
    readings.candidates[i]              # the distinct answers to prompt i, with their authors
    readings.rows["qwen"][c]            # teacher qwen's TeacherRows of candidate c

Each teacher answers each prompt `samples` times (greedy, then sampled). The distinct answers to
a prompt are its candidates; every teacher then scores every candidate in its own rendering. This
is all a multi-teacher run needs from its teachers: which candidate the student learns from and
how the teachers' distributions are fused are decided afterwards (`fusion`) from these numbers
alone, so a capture of the readings serves any strategy. The cost is teachers x candidates
scoring passes, which are cheap next to generation. A local teacher's weights are released after
each of its two passes, so at most one teacher's weights are in memory at any time (each is
loaded twice: once to answer, once to score).
"""

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from polydistill.chat import Prompt
from polydistill.errors import UserError
from polydistill.teachers.protocol import (
    Progress,
    Teacher,
    TeacherRows,
    check_rows,
    release_weights,
)


@dataclass(frozen=True)
class Candidate:
    """One distinct answer to prompt `prompt`: its text, and who wrote it (teacher, sample)."""

    prompt: int
    text: str
    authors: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Readings:
    """Candidates in prompt order (`candidates_of[i]`: indices of prompt i's candidates) and
    each teacher's rows for every candidate, in the same order."""

    candidates: list[Candidate]
    candidates_of: list[list[int]]
    rows: dict[str, list[TeacherRows]]


def distinct_candidates(answers: dict[str, list[list[str]]], prompts: int) -> list[Candidate]:
    """Merge the teachers' answers (`answers[teacher][sample][prompt]`) into distinct
    candidates per prompt (in Unicode NFC), in prompt order, then teacher order, then sample
    order."""
    out: list[Candidate] = []
    for i in range(prompts):
        found: dict[str, list[tuple[str, int]]] = {}
        for name, samples in answers.items():
            for j, texts in enumerate(samples):
                # NFC, as prompts are: a tokenizer that normalises (Qwen's) reads back exactly
                # what another teacher wrote, which byte-exact alignment needs
                found.setdefault(unicodedata.normalize("NFC", texts[i]), []).append((name, j))
        out += [Candidate(i, text, tuple(authors)) for text, authors in found.items()]
    return out


def gather_readings(
    teachers: Sequence[Teacher],
    prompts: Sequence[Prompt],
    *,
    samples: int,
    max_new_tokens: int,
    seed: int,
    top_k: int,
    temperature: float,
    progress: Callable[[str, int], Progress] | None = None,
) -> Readings:
    """Answers from every teacher, then every teacher's reading of every distinct answer.
    `progress(description, rows)` makes a progress callback for each pass."""
    if not prompts:
        raise UserError("no prompts to distil from")
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise UserError(f"teacher names must be distinct: {names}")
    answers = {}
    for t in teachers:  # one teacher's weights in memory at a time: each is released after use
        answers[t.name] = t.complete(
            prompts,
            samples=samples,
            max_new_tokens=max_new_tokens,
            seed=seed,
            on_batch=progress(f"answers {t.name}", len(prompts) * samples) if progress else None,
        )
        release_weights(t)
    candidates = distinct_candidates(answers, len(prompts))
    candidates_of: list[list[int]] = [[] for _ in prompts]
    for c, candidate in enumerate(candidates):
        candidates_of[candidate.prompt].append(c)
    rows = {}
    for t in teachers:
        read = t.score(
            [prompts[c.prompt] for c in candidates],
            [c.text for c in candidates],
            top_k=top_k,
            temperature=temperature,
            on_batch=progress(f"scores {t.name}", len(candidates)) if progress else None,
        )
        release_weights(t)
        for r in read:
            check_rows(r, f"teacher {t.name!r}")
        rows[t.name] = read
    return Readings(candidates, candidates_of, rows)


def readings_without(readings: Readings, name: str) -> Readings:
    """The readings as if teacher `name` had never been asked: its rows gone, the candidates
    only it wrote with them, and the rest in the order a gathering without it gives (first
    author's teacher, then sample). What a leave-one-out model learns from."""
    order = {teacher: i for i, teacher in enumerate(readings.rows)}
    authors = [
        tuple(a for a in candidate.authors if a[0] != name) for candidate in readings.candidates
    ]
    keep = [
        c
        for cs in readings.candidates_of
        for c in sorted(
            (c for c in cs if authors[c]),
            key=lambda c: min((order[t], j) for t, j in authors[c]),
        )
    ]
    candidates = [replace(readings.candidates[c], authors=authors[c]) for c in keep]
    candidates_of: list[list[int]] = [[] for _ in readings.candidates_of]
    for i, candidate in enumerate(candidates):
        candidates_of[candidate.prompt].append(i)
    return Readings(
        candidates,
        candidates_of,
        {t: [rows[c] for c in keep] for t, rows in readings.rows.items() if t != name},
    )
