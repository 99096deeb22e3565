"""From the teachers' readings to the student's training rows: choose, project, fuse, account.

    w = example_weights("evidence", names, readings, prompts, domains, temperature=0.05)
    data, contributions = student_targets(readings, teachers, student_tokenizer, prompts,
                                          domains, strategy="evidence", weights=w,
                                          temperature=0.05, top_k=32, completions_per_prompt=1)

1. Weights: the fusion strategy gives each teacher a weight per example (`fusion`), from numbers
   the readings already hold, e.g. each teacher's bits per byte on the prompt and its own answer.
2. Choice: the candidate answers of a prompt are ranked by their bits per byte under the
   weighted teachers (sum_t w_t bpb_t(answer)); the best `completions_per_prompt` are kept. With
   evidence weights that is the answer of the teacher at home on the prompt; with uniform
   weights the answer the teachers agree on most.
3. Projection: every teacher's reading of a chosen answer is aligned byte for byte with the
   student's rendering and projected into the student's vocabulary (`align`).
4. Fusion: per student position, the teachers' projected targets are combined with the weights
   (`fusion.mix` or `fusion.product`), or per-position confidence weights.
5. Accounting: per domain and over all positions, the share of target mass each teacher
   supplied; per domain, who wrote the chosen answers; per teacher, the mass its projection
   left in the tail. The student's lineage (`polydistill.lineage`) takes its shares from it.

Only prompts and the teachers' own answers come in (gold answers only for the marked `mince` /
`avgce` baselines, through their weights), so a gold answer never reaches the student.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from polydistill import fusion
from polydistill.align import project, render, vocabmap
from polydistill.chat import Prompt, prompt_bytes
from polydistill.targets import SparseTargets
from polydistill.teachers.protocol import Teacher, TeacherRows
from polydistill.teachers.readings import Readings


@dataclass(frozen=True)
class DistillationData:
    """Training rows: prompt and answer ids in the student's rendering (the answer ends with
    the end-of-turn token) and the targets of every answer position; row r's targets are
    `targets[offsets[r]:offsets[r + 1]]`, one per answer token (the position before each token
    predicts it). `targets.mask` says which count in the loss."""

    prompts: list[list[int]]
    completions: list[list[int]]
    targets: SparseTargets
    offsets: list[int]
    prompt_of: list[int]  # the prompt each row answers (several rows with several answers)

    def __len__(self) -> int:
        return len(self.prompts)

    def lengths(self) -> list[int]:
        """Prompt plus answer tokens of each row."""
        return [len(p) + len(c) for p, c in zip(self.prompts, self.completions, strict=True)]

    def take(self, rows: Sequence[int]) -> tuple[list[list[int]], list[list[int]], SparseTargets]:
        """Prompt ids, answer ids and the concatenated targets of `rows`, in their order (as
        `rows.DiskRows.take` reads them from disk)."""
        spans = [slice(self.offsets[r], self.offsets[r + 1]) for r in rows]
        t = self.targets
        targets = SparseTargets(
            *(torch.cat([a[s] for s in spans]) for a in (t.ids, t.logprobs, t.tail, t.mask))
        )
        return [self.prompts[r] for r in rows], [self.completions[r] for r in rows], targets


def answer_bytes(text: str) -> int:
    """Bytes of an answer plus one for its end-of-turn: an empty answer still costs a token."""
    return len(text.encode("utf-8")) + 1


def own_answer_bits_per_byte(readings: Readings, prompts: Sequence[Prompt]) -> torch.Tensor:
    """`[teachers, prompts]`: each teacher's bits per byte on the prompt and its own greedy
    answer, the evidence of how at home it is there (markup tokens cost a trained model ~0)."""
    names = list(readings.rows)
    out = torch.zeros((len(names), len(prompts)), dtype=torch.float64)
    for i, prompt in enumerate(prompts):
        for c in readings.candidates_of[i]:
            candidate = readings.candidates[c]
            for author, sample in candidate.authors:
                if sample == 0:
                    size = prompt_bytes(prompt) + answer_bytes(candidate.text)
                    out[names.index(author), i] = readings.rows[author][c].bits() / size
    return out


def answer_bits_per_byte(rows: Sequence[TeacherRows], texts: Sequence[str]) -> list[float]:
    """Bits per byte a teacher spends on each answer (`rows[i]` is its reading of `texts[i]`)."""
    return [
        r.bits(completion_only=True) / answer_bytes(t) for r, t in zip(rows, texts, strict=True)
    ]


def candidate_bits_per_byte(readings: Readings) -> torch.Tensor:
    """`[teachers, candidates]`: each teacher's bits per byte on each candidate answer."""
    texts = [c.text for c in readings.candidates]
    return torch.tensor(
        [answer_bits_per_byte(rows, texts) for rows in readings.rows.values()],
        dtype=torch.float64,
    )


def choose_answers(
    readings: Readings, weights: torch.Tensor, per_prompt: int
) -> list[tuple[int, int]]:
    """(prompt, candidate) pairs: per prompt the `per_prompt` candidates with the lowest
    weighted bits per byte; ties (to 1e-9 bits, so that rounding noise cannot break them) go to
    the earlier candidate."""
    scores = (
        weights[:, [c.prompt for c in readings.candidates]] * candidate_bits_per_byte(readings)
    ).sum(0)
    chosen = []
    for i, candidates in enumerate(readings.candidates_of):
        ranked = sorted(candidates, key=lambda c: (round(float(scores[c]), 9), c))
        chosen += [(i, c) for c in ranked[:per_prompt]]
    return chosen


def _answer_rows(targets: SparseTargets, start: int) -> SparseTargets:
    """The projected rows that predict the answer tokens and the end-of-turn."""
    rows = slice(start - 1, len(targets) - 1)
    return SparseTargets(
        targets.ids[rows], targets.logprobs[rows], targets.tail[rows], targets.mask[rows]
    )


def _concat(pieces: list[SparseTargets]) -> SparseTargets:
    return SparseTargets(
        torch.cat([p.ids for p in pieces]),
        torch.cat([p.logprobs for p in pieces]),
        torch.cat([p.tail for p in pieces]),
        torch.cat([p.mask for p in pieces]),
    )


# Student prompt ids, answer ids, and each teacher's projected rows (by name) of one answer.
Projection = tuple[list[int], list[int], dict[str, SparseTargets]]
"""A chosen answer in the student's rendering: prompt ids, answer ids, one target per teacher."""


def _project_one(
    readings: Readings,
    teachers: Sequence[Teacher],
    student_tokenizer: PreTrainedTokenizerBase,
    maps: dict[str, vocabmap.VocabMap],
    prompt: Prompt,
    candidate: int,
    k: int,
) -> Projection:
    text = readings.candidates[candidate].text
    per_teacher = {}
    for t in teachers:
        seq = render.render_aligned(t.tokenizer, student_tokenizer, prompt, text, t.name)
        rows: TeacherRows = readings.rows[t.name][candidate]
        ids, logprobs = rows.full_rows()
        projected = project.project(seq, ids, logprobs, maps[t.name], k=k)
        per_teacher[t.name] = _answer_rows(projected, seq.student_start)
    start = seq.student_start
    return seq.student_ids[:start].tolist(), seq.student_ids[start:].tolist(), per_teacher


def project_answers(
    readings: Readings,
    teachers: Sequence[Teacher],
    student_tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    chosen: Sequence[tuple[int, int]],
    top_k: int,
    projections: dict[tuple[Prompt, str], Projection] | None = None,
) -> tuple[list[list[int]], list[list[int]], list[SparseTargets], list[int]]:
    """Student prompt ids, answer ids, one target per teacher over all answer positions, offsets.

    A (prompt, answer) pair is projected once: a repeated prompt reuses it, and so does every
    later call given the same `projections` dict (the benchmark's models mostly choose the same
    answers), per teacher, so that a call with fewer teachers (leave-one-out) reuses it too. The
    dict is only valid for one gathering of readings, one student and one `top_k`."""
    projections = {} if projections is None else projections
    prompt_ids, answer_ids, offsets = [], [], [0]
    per_teacher: list[list[SparseTargets]] = [[] for _ in teachers]
    maps = {t.name: vocabmap.vocab_map(t.tokenizer, student_tokenizer, t.name) for t in teachers}
    k = min(top_k, len(student_tokenizer))  # a row cannot list more ids than the vocabulary has
    for i, c in chosen:
        key = (prompts[i], readings.candidates[c].text)
        known = projections[key][2] if key in projections else {}
        missing = [t for t in teachers if t.name not in known]
        if missing:
            prompt, answer, new = _project_one(
                readings, missing, student_tokenizer, maps, prompts[i], c, k
            )
            projections[key] = (prompt, answer, {**known, **new})
        prompt, answer, targets = projections[key]
        for pieces, t in zip(per_teacher, teachers, strict=True):
            pieces.append(targets[t.name])
        prompt_ids.append(prompt)
        answer_ids.append(answer)
        offsets.append(offsets[-1] + len(answer))
    return prompt_ids, answer_ids, [_concat(pieces) for pieces in per_teacher], offsets


@dataclass
class Tally:
    """`contributions.json` as running sums, so that chunks of rows add up (`add`) to what
    their rows together give (`result`): sums and counts of supplied mass per domain and over
    all supervised positions, and of each teacher's tail. One chunk's `result` equals the means
    over it bit for bit; over several, the sums are added chunk by chunk, so a share can differ
    in its last float64 bits (not in its six printed decimals but by a rounding tie)."""

    names: list[str]
    examples: list[dict]
    written: dict[str, dict[str, int]]
    mass: dict[str, tuple[torch.Tensor, int]]  # domain -> (sum over its supervised positions, n)
    overall: tuple[torch.Tensor, int]
    tail: list[tuple[torch.Tensor, int]]  # per teacher: (sum of tails in the loss, n)
    domains: set[str]

    def add(self, other: "Tally") -> None:
        """Fold a later chunk's sums and examples into this one."""
        self.examples += other.examples
        for domain, counts in other.written.items():
            mine = self.written.setdefault(domain, dict.fromkeys(self.names, 0))
            for name, count in counts.items():
                mine[name] += count
        for domain, (total, n) in other.mass.items():
            held, m = self.mass.get(domain, (0.0, 0))
            self.mass[domain] = (held + total, m + n)
        self.overall = (self.overall[0] + other.overall[0], self.overall[1] + other.overall[1])
        self.tail = [(a + b, m + n) for (a, m), (b, n) in zip(self.tail, other.tail, strict=True)]
        self.domains |= other.domains

    def accounts(self, strategy: str) -> dict:
        """`contributions.json` of the rows tallied, fused by `strategy`."""
        return {**self.result(), "strategy": strategy}

    def result(self) -> dict:
        """What `contributions.json` holds but the strategy: see the module docstring, step 5."""
        names = self.names
        mass = {}
        for domain in sorted(self.domains):
            total, n = self.mass.get(domain, (None, 0))
            if n:
                share = total / n
                mass[domain] = {name: round(float(share[t]), 6) for t, name in enumerate(names)}
        total, n = self.overall
        overall = (total / n).tolist() if n else []
        tail = [float(total / n) if n else 0.0 for total, n in self.tail]
        return {
            "teachers": list(names),
            "share": {name: round(s, 6) for name, s in zip(names, overall, strict=False)},
            "mass": mass,
            "completions": self.written,
            "tail": {name: round(t, 6) for name, t in zip(names, tail, strict=True)},
            "examples": self.examples,
        }


def contribution_tally(
    names: Sequence[str],
    readings: Readings,
    chosen: Sequence[tuple[int, int]],
    domains: Sequence[str],
    supplied: torch.Tensor,
    per_teacher: Sequence[SparseTargets],
    example_weights: torch.Tensor,
    offsets: Sequence[int],
) -> Tally:
    """The sums behind `contributions.json` of these rows (see `Tally`)."""
    written: dict[str, dict[str, int]] = {}
    examples = []
    for i, c in chosen:
        authors = [a for a, _ in readings.candidates[c].authors]
        by = max(authors, key=lambda a: float(example_weights[names.index(a), i]))
        domain = domains[i]
        written.setdefault(domain, dict.fromkeys(names, 0))[by] += 1
        examples.append(
            {
                "prompt": i,
                "domain": domain,
                "completion_by": by,
                "weights": {n: round(float(example_weights[t, i]), 6) for t, n in enumerate(names)},
            }
        )
    lengths = np.diff(np.asarray(offsets))
    row_domain = np.repeat([domains[i] for i, _ in chosen], lengths)
    supervised = supplied.sum(0) > 0
    mass = {}
    for domain in sorted(set(domains)):
        here = torch.from_numpy(row_domain == domain) & supervised
        if bool(here.any()):
            mass[domain] = (supplied[:, here].sum(dim=1), int(here.sum()))
    overall = (supplied[:, supervised].sum(dim=1), int(supervised.sum()))
    tail = [(t.tail[t.mask].double().sum(), int(t.mask.sum())) for t in per_teacher]
    return Tally(list(names), examples, written, mass, overall, tail, set(domains))


def contributions(*args, **kwargs) -> dict:
    """`contributions.json` of these rows (`contribution_tally`'s arguments)."""
    return contribution_tally(*args, **kwargs).result()


def example_weights(
    strategy: str,
    names: Sequence[str],
    readings: Readings,
    prompts: Sequence[Prompt],
    domains: Sequence[str],
    *,
    temperature: float,
    fixed: dict[str, float] | None = None,
    routes: dict[str, str] | None = None,
    gold_bits_per_byte: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[teachers, prompts]` weights of a strategy (`fusion.STRATEGIES`); per-position
    strategies (confidence) rank answers with uniform weights."""
    n, m = len(names), len(prompts)
    if strategy in ("uniform", "product", "confidence"):
        return fusion.uniform_weights(n, m)
    if strategy == "fixed":
        return fusion.fixed_weights(names, fixed or {}, m)
    if strategy == "evidence":
        return fusion.evidence_weights(own_answer_bits_per_byte(readings, prompts), temperature)
    if strategy == "route":
        return fusion.route_weights(names, domains, routes or {})
    if strategy in fusion.USES_GOLD:
        if gold_bits_per_byte is None:
            raise ValueError(f"strategy {strategy!r} needs the teachers' bits on the gold answers")
        return fusion.gold_weights(gold_bits_per_byte, strategy)
    raise ValueError(f"unknown fusion strategy {strategy!r}")


def fused_rows(
    readings: Readings,
    teachers: Sequence[Teacher],
    student_tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    domains: Sequence[str],
    *,
    strategy: str,
    weights: torch.Tensor,
    temperature: float,
    top_k: int,
    completions_per_prompt: int,
    projections: dict[tuple[Prompt, str], Projection] | None = None,
) -> tuple[DistillationData, Tally]:
    """The student's training rows and the tally of their `contributions.json`; see the
    module. `projections`: a dict kept between calls on the same readings (see
    `project_answers`)."""
    names = [t.name for t in teachers]
    chosen = choose_answers(readings, weights, completions_per_prompt)
    prompt_ids, answer_ids, per_teacher, offsets = project_answers(
        readings, teachers, student_tokenizer, prompts, chosen, top_k, projections
    )
    if strategy == "confidence":
        position_weights = fusion.confidence_weights(per_teacher, temperature)
    else:
        position_weights = fusion.per_position(weights[:, [i for i, _ in chosen]], offsets)
    vocab = len(student_tokenizer)
    k = min(top_k, vocab)  # as in project_answers: no row lists more ids than the vocabulary
    if strategy == "product":
        fused = fusion.product(per_teacher, position_weights, k, vocab)
    else:
        fused = fusion.mix(per_teacher, position_weights, k)
    supplied = fusion.supplied_mass(per_teacher, position_weights)
    tally = contribution_tally(
        names, readings, chosen, domains, supplied, per_teacher, weights, offsets
    )
    rows = DistillationData(prompt_ids, answer_ids, fused, offsets, [i for i, _ in chosen])
    return rows, tally


def student_targets(
    readings: Readings,
    teachers: Sequence[Teacher],
    student_tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    domains: Sequence[str],
    **settings,
) -> tuple[DistillationData, dict]:
    """The student's training rows and `contributions.json` (`fused_rows`' settings)."""
    rows, tally = fused_rows(readings, teachers, student_tokenizer, prompts, domains, **settings)
    return rows, tally.accounts(settings["strategy"])
