"""The teachers grade the student's samples: readings -> projection -> fusion -> training rows.

    rows, stats = graded_rows(drawn, teachers, student_tokenizer, prompts,
                              Grading(strategy="evidence", temperature=0.05), top_k=32)

Every teacher scores every sample through `Teacher.score` (its own tokenizer and chat template,
at temperature 1), each reading is aligned byte for byte with the student's rendering of the
sample and projected into the student's vocabulary on the student's sampled path
(`align.project`), and the projections are fused per position with the configured strategy
(`fusion`), as `student_targets` does for the teachers' own answers. `evidence` weighs each
teacher, per sample, by its bits per byte on the prompt and the student's sample.

The sampled token and the tail. A teacher's reading lists its top-k ids at each position; the
student's sample often takes a token outside them. `score` also returns the exact log-prob of
every observed token, and on the student's path the observed tokens ARE the sample. So before
projecting, each teacher row whose top-k misses the observed token gets it as one more entry
with its exact log-prob (`with_observed`); the teacher's tail is then 1 - top-k mass - that
probability and is spread as everywhere else (the projection's tail). Along the sample the
projection's chain rule multiplies only observed-token probabilities, so the student's sampled
token receives exactly the probability of the teacher's own tokenization of the bytes it covers
(plus, as for any id, the mass of top-k candidates whose longest student prefix it is); with a
shared tokenizer that is the teacher's probability of the token itself. The projection and
fusion run untruncated (wide enough for every entry), and the final row keeps the `top_k` most
probable other ids plus one slot for the sampled token (`keep_sampled`), so no truncation can
move the sampled token into the tail: rows have `top_k + 1` columns. Without the observed
log-prob the sampled token's probability would vanish into the tail whenever the top-k missed
it, and reverse KL, which lives on the student's samples, would lose exactly the positions it is
about.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase as Tokenizer

from polydistill import fusion
from polydistill.align import project, render, vocabmap
from polydistill.align.chunks import AlignedSequence
from polydistill.chat import Prompt, prompt_bytes
from polydistill.errors import UserError
from polydistill.onpolicy.sampling import Samples
from polydistill.student.targets import DistillationData, answer_bytes
from polydistill.targets import SparseTargets
from polydistill.teachers.protocol import Teacher, TeacherRows

ON_POLICY_STRATEGIES = ("uniform", "product", "fixed", "evidence", "confidence", "route")


@dataclass(frozen=True)
class Grading:
    """How the teachers' grades are fused: a `fusion` strategy and its settings (the gold-answer
    baselines `mince` / `avgce` have no gold answer for a student's sample)."""

    strategy: str = "uniform"
    temperature: float = 0.05  # evidence / confidence softmax temperature
    fixed: Mapping[str, float] = field(default_factory=dict)
    routes: Mapping[str, str] = field(default_factory=dict)


def with_observed(rows: TeacherRows) -> tuple[np.ndarray, np.ndarray]:
    """`rows.full_rows()` with one more column `[T, k + 1]`: where a row's top-k misses the
    observed next token, that token with its exact log-prob (`token_logprobs`); elsewhere an id
    the row does not list, at -inf (probability zero, so it moves no mass)."""
    ids, logprobs = rows.full_rows()
    n, k = ids.shape
    observed = np.full(n, -1, dtype=np.int64)
    observed[:-1] = rows.ids[1:]
    observed_lp = np.full(n, -np.inf, dtype=np.float64)
    observed_lp[:-1] = rows.token_logprobs
    answer = np.zeros(n, dtype=bool)
    answer[rows.start - 1 : n - 1] = True
    missing = answer & ~(ids == observed[:, None]).any(1)
    candidates = np.arange(k + 2)  # k listed ids and the observed one leave one of these free
    taken = (ids[:, :, None] == candidates).any(1) | (observed[:, None] == candidates)
    filler = np.argmin(taken, axis=1)
    extra_id = np.where(missing, observed, filler)
    extra_lp = np.where(missing, observed_lp, -np.inf)
    return (
        np.concatenate([ids, extra_id[:, None]], axis=1),
        np.concatenate([logprobs.astype(np.float64), extra_lp[:, None]], axis=1),
    )


def observed_missing(rows: TeacherRows) -> int:
    """Answer positions whose observed token is outside the teacher's top-k."""
    observed = rows.ids[rows.start :]
    return int((~(rows.top_ids == observed[:, None]).any(1)).sum())


def path_depth(seq: AlignedSequence) -> int:
    """Most teacher tokens any student token of the completion overlaps (at least 1): each is a
    step of the projection's path, each step places at most a row's candidates."""
    teacher_ends = np.cumsum(seq.teacher_lengths)
    student_ends = np.cumsum(seq.student_lengths)
    starts = student_ends - seq.student_lengths
    first = np.searchsorted(teacher_ends, starts, side="right")
    last = np.searchsorted(teacher_ends, student_ends - 1, side="right")
    return int(np.maximum(last - first + 1, 1).max(initial=1))


def keep_sampled(
    targets: SparseTargets, sampled: torch.Tensor, top_k: int, vocab_size: int
) -> SparseTargets:
    """Rows of `top_k + 1` entries: the sampled id with its probability (-inf where the row
    gives it none), then the `top_k` most probable other listed ids; the rest of the row's mass
    joins its tail. Entries at -inf get distinct ids the row does not list (losses refuse a
    repeated id and count a -inf slot in the tail)."""
    lp = targets.logprobs.double()
    finite = torch.isfinite(lp)
    is_sampled = (targets.ids == sampled[:, None]) & finite
    sampled_lp = torch.where(is_sampled, lp, -torch.inf).amax(dim=1)
    others = lp.masked_fill(is_sampled | ~finite, -torch.inf)
    width = min(top_k, others.shape[1])
    top = others.topk(width, dim=1)
    ids = torch.cat([sampled[:, None], targets.ids.gather(1, top.indices)], dim=1)
    logprobs = torch.cat([sampled_lp[:, None], top.values], dim=1)
    if width < top_k:  # fewer entries than slots: pad with -inf
        pad = torch.full((len(ids), top_k - width), -torch.inf, dtype=logprobs.dtype)
        ids = torch.cat([ids, torch.zeros_like(pad, dtype=ids.dtype)], dim=1)
        logprobs = torch.cat([logprobs, pad], dim=1)
    kept = torch.isfinite(logprobs)
    dropped = lp.exp().where(finite, 0.0).sum(1) - logprobs.exp().where(kept, 0.0).sum(1)
    tail = (targets.tail.double() + dropped).clamp(0.0, 1.0)
    ids = _distinct_padding(ids, kept, min(2 * ids.shape[1], vocab_size))
    logprobs = torch.where(targets.mask[:, None], logprobs, -torch.inf)
    tail = torch.where(targets.mask, tail, 0.0)
    return SparseTargets(ids, logprobs.float(), tail.float(), targets.mask)


def _distinct_padding(ids: torch.Tensor, kept: torch.Tensor, limit: int) -> torch.Tensor:
    """Ids of the entries not `kept` replaced by the smallest ids below `limit` (at least the
    row width) that the row's kept entries skip."""
    candidates = torch.arange(limit)
    used = ((ids[:, :, None] == candidates) & kept[:, :, None]).any(1)
    spare = torch.argsort(used.to(torch.int8), dim=1, stable=True)  # unused ids first
    need = ((~kept).long().cumsum(1) - 1).clamp_min(0)
    return torch.where(kept, ids, spare.gather(1, need))


@dataclass(frozen=True)
class _Graded:
    """Per teacher: its readings and projections of every sample, and the misses it had."""

    rows: list[TeacherRows]
    projected: list[SparseTargets]
    missing: int


def _grade(
    teacher: Teacher, drawn: Samples, prompts: Sequence[Prompt], student: Tokenizer, top_k: int
) -> _Graded:
    texts = [r.text for r in drawn.rows]
    asked = [prompts[r.prompt] for r in drawn.rows]
    readings = teacher.score(asked, texts, top_k=top_k, temperature=1.0)
    vmap = vocabmap.vocab_map(teacher.tokenizer, student, teacher.name)
    projected = []
    for reading, sample in zip(readings, drawn.rows, strict=True):
        seq = render.render_aligned(
            teacher.tokenizer, student, prompts[sample.prompt], sample.text, teacher.name
        )
        if not np.array_equal(seq.teacher_ids, reading.ids):
            raise UserError(f"teacher {teacher.name!r} scored another rendering than its own")
        if seq.student_ids.tolist() != sample.prompt_ids + sample.answer_ids:
            raise ValueError("the sample's row is not the student's rendering of its text")
        ids, logprobs = with_observed(reading)
        wide = min(ids.shape[1] * path_depth(seq), len(student))
        whole = project.project(seq, ids, logprobs, vmap, k=wide)
        start = seq.student_start
        rows = slice(start - 1, len(whole) - 1)
        projected.append(
            SparseTargets(whole.ids[rows], whole.logprobs[rows], whole.tail[rows], whole.mask[rows])
        )
    return _Graded(readings, projected, sum(observed_missing(r) for r in readings))


def sample_bits_per_byte(graded: Sequence[_Graded], drawn: Samples, prompts: Sequence[Prompt]):
    """`[teachers, samples]`: each teacher's bits per byte on the prompt and the student's
    sample (markup included, as `student_targets.own_answer_bits_per_byte` counts them)."""
    sizes = [prompt_bytes(prompts[r.prompt]) + answer_bytes(r.text) for r in drawn.rows]
    return torch.tensor(
        [[rows.bits() / size for rows, size in zip(g.rows, sizes, strict=True)] for g in graded],
        dtype=torch.float64,
    )


def sample_weights(
    grading: Grading,
    names: Sequence[str],
    graded: Sequence[_Graded],
    drawn: Samples,
    prompts: Sequence[Prompt],
    domains: Sequence[str] | None,
) -> torch.Tensor:
    """`[teachers, samples]` weights of the strategy (per-position ones rank nothing here)."""
    n, m = len(names), len(drawn.rows)
    if grading.strategy in ("uniform", "product", "confidence"):
        return fusion.uniform_weights(n, m)
    if grading.strategy == "fixed":
        return fusion.fixed_weights(names, grading.fixed, m)
    if grading.strategy == "evidence":
        bits = sample_bits_per_byte(graded, drawn, prompts)
        return fusion.evidence_weights(bits, grading.temperature)
    if grading.strategy == "route":
        if domains is None:
            raise UserError("fusion strategy 'route' needs each prompt's domain")
        return fusion.route_weights(names, [domains[r.prompt] for r in drawn.rows], grading.routes)
    raise UserError(
        f"fusion strategy {grading.strategy!r} cannot grade the student's samples; "
        f"choose one of {', '.join(ON_POLICY_STRATEGIES)}"
    )


def _concat(pieces: Sequence[SparseTargets]) -> SparseTargets:
    width = max(p.k for p in pieces)

    def widen(p: SparseTargets) -> tuple[torch.Tensor, torch.Tensor]:
        extra = width - p.k
        logprobs = torch.nn.functional.pad(p.logprobs, (0, extra), value=-torch.inf)
        ids = torch.nn.functional.pad(p.ids, (0, extra))
        # fusion.product looks ids up by value: a padding slot must not repeat a listed id
        return _distinct_padding(ids, torch.isfinite(logprobs), 2 * width), logprobs

    widened = [widen(p) for p in pieces]
    return SparseTargets(
        torch.cat([ids for ids, _ in widened]),
        torch.cat([lp for _, lp in widened]),
        torch.cat([p.tail for p in pieces]),
        torch.cat([p.mask for p in pieces]),
    )


def graded_rows(
    drawn: Samples,
    teachers: Sequence[Teacher],
    student: Tokenizer,
    prompts: Sequence[Prompt],
    grading: Grading,
    *,
    top_k: int,
    domains: Sequence[str] | None = None,
) -> tuple[DistillationData, dict]:
    """The student's training rows on its own samples (targets `[positions, top_k + 1]`), and
    what happened: samples, retokenised, truncated, teacher calls (one `score` per teacher),
    per teacher the positions where the sampled token was outside its top-k and the mean
    projection tail, and the mean fused tail."""
    if not drawn.rows:
        raise ValueError("no samples to grade")
    names = [t.name for t in teachers]
    graded = [_grade(t, drawn, prompts, student, top_k) for t in teachers]
    offsets = np.cumsum([0] + [len(r.answer_ids) for r in drawn.rows]).tolist()
    per_teacher = [_concat(g.projected) for g in graded]
    weights = sample_weights(grading, names, graded, drawn, prompts, domains)
    if grading.strategy == "confidence":
        position_weights = fusion.confidence_weights(per_teacher, grading.temperature)
    else:
        position_weights = fusion.per_position(weights, offsets)
    vocab = len(student)
    wide = min(sum(t.k for t in per_teacher), vocab)
    if grading.strategy == "product":
        fused = fusion.product(per_teacher, position_weights, wide, vocab)
    else:
        fused = fusion.mix(per_teacher, position_weights, wide)
    sampled = torch.tensor([i for r in drawn.rows for i in r.answer_ids], dtype=torch.long)
    targets = keep_sampled(fused, sampled, min(top_k, vocab - 1), vocab)
    data = DistillationData(
        prompts=[r.prompt_ids for r in drawn.rows],
        completions=[r.answer_ids for r in drawn.rows],
        targets=targets,
        offsets=offsets,
        prompt_of=[r.prompt for r in drawn.rows],
    )
    stats = {
        "samples": len(drawn.rows),
        "retokenised": drawn.retokenised,
        "truncated": drawn.truncated,
        "teacher_calls": len(teachers),
        "positions": len(targets),
        "sampled_outside_top_k": {n: g.missing for n, g in zip(names, graded, strict=True)},
        "projection_tail": {
            n: round(project.tail_share(t), 6) for n, t in zip(names, per_teacher, strict=True)
        },
        "fused_tail": round(project.tail_share(targets), 6),
    }
    return data, stats
