"""The numbers behind the report's tables, as plain rows the HTML template lays out.

Models are listed teachers first, then the student, then baselines, each group in the order of
`metrics.json`. In a metric table the best value of each column is flagged (the highest accuracy,
the lowest bits per byte; ties all flagged); a model without a value for a domain has `None`
there and no mean.
"""

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from polydistill.report.inputs import Contributions, Metrics, is_number

MODEL_GROUPS = ("teacher:", "student", "baseline:")
# The specialists benchmark's targets: on each domain the student reaches this share of the best
# teacher's accuracy, and its mean over domains beats every baseline named by these prefixes.
SPECIALIST_SHARE = 0.95
BASELINES_TO_BEAT = ("baseline:single:", "baseline:uniform", "baseline:seqkd")
WITHOUT = "baseline:without:"  # the leave-one-out baselines
# The keys the training loop writes (train.step.RECORD_KEYS, spelled out so that the report does
# not import torch); any other number in a record is a loss part, per token.
RECORD_KEYS = ("step", "loss", "lr", "grad_norm", "loss_tokens", "tokens_per_s", "validation")


@dataclass(frozen=True)
class Cell:
    value: float | None
    best: bool = False


@dataclass(frozen=True)
class MetricRow:
    model: str
    params: int
    cells: tuple[Cell, ...]  # one per domain, then the mean over domains


@dataclass(frozen=True)
class MetricTable:
    columns: tuple[str, ...]  # the domains, then "mean"
    rows: tuple[MetricRow, ...]


@dataclass(frozen=True)
class TeacherTable:
    """Per domain, one number per teacher (a mass share or a count of completions)."""

    teachers: tuple[str, ...]
    rows: tuple[tuple[str, tuple[float, ...]], ...]  # (domain, value per teacher)
    totals: tuple[float, ...] | None  # column sums, where summing means something


@dataclass(frozen=True)
class TrainingRow:
    model: str
    steps: int
    first_loss: float
    final_loss: float
    lowest_loss: float
    tokens_per_s: float | None  # median over steps; None when the log does not record it
    final_parts: tuple[tuple[str, float], ...]  # loss parts of the last step, by name
    # (step, score) of the weights chosen on validation (`student.validate_every`), else None
    chosen: tuple[int, float] | None = None


@dataclass(frozen=True)
class WorthRow:
    """A leave-one-out baseline beside the student: per domain, the accuracy without the
    teacher and what the teacher adds (student minus without); None where either is absent."""

    teacher: str
    cells: tuple[tuple[float | None, float | None], ...]


@dataclass(frozen=True)
class TargetRow:
    target: str
    needed: float  # the student must reach at least this (mean: exceed it)
    reached: float
    met: bool
    kind: str  # how the two numbers print: "percent" or "count"


def ordered_models(names: Iterable[str]) -> list[str]:
    """Teachers, then the student, then baselines; file order within each group."""
    names = list(names)
    group = {
        name: next(i for i, g in enumerate(MODEL_GROUPS) if name.startswith(g)) for name in names
    }
    return sorted(names, key=lambda name: group[name])  # sorted is stable


def best_flags(values: list[float | None], higher_is_better: bool) -> list[bool]:
    """Which values are the best of the column (all of them on a tie); NaN is never best."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return [False] * len(values)
    best = max(present) if higher_is_better else min(present)
    return [v is not None and v == best for v in values]


def metric_table(metrics: Metrics, key: str, higher_is_better: bool) -> MetricTable:
    """`key` ("accuracy" or "bits_per_byte") per model and domain, with the mean over domains."""
    models = ordered_models(metrics.models)
    columns: list[list[float | None]] = []
    for domain in metrics.domains:
        columns.append([getattr(metrics.models[m], key).get(domain) for m in models])
    means: list[float | None] = []
    for row in zip(*columns, strict=True):
        means.append(None if None in row else math.fsum(row) / len(row))
    columns.append(means)
    flags = [best_flags(column, higher_is_better) for column in columns]
    rows = []
    for i, model in enumerate(models):
        cells = tuple(Cell(col[i], flag[i]) for col, flag in zip(columns, flags, strict=True))
        rows.append(MetricRow(model, metrics.models[model].params, cells))
    return MetricTable((*metrics.domains, "mean"), tuple(rows))


def teacher_table(
    table: Mapping[str, Mapping[str, float]], domains: list[str], teachers: list[str], totals: bool
) -> TeacherTable:
    """`table[domain][teacher]` in the order of `domains` and `teachers`; missing values are 0."""
    rows = tuple(
        (domain, tuple(table[domain].get(t, 0) for t in teachers))
        for domain in domains
        if domain in table
    )
    sums = tuple(sum(values[i] for _, values in rows) for i in range(len(teachers)))
    return TeacherTable(tuple(teachers), rows, sums if totals else None)


def mass_table(contributions: Contributions, domains: list[str]) -> TeacherTable:
    return teacher_table(contributions.mass, domains, contributions.teachers, totals=False)


def completions_table(contributions: Contributions, domains: list[str]) -> TeacherTable:
    return teacher_table(contributions.completions, domains, contributions.teachers, totals=True)


def training_rows(logs: Mapping[str, list[dict[str, float]]]) -> list[TrainingRow]:
    rows = []
    for model in ordered_models(logs):
        records = logs[model]
        losses = [r["loss"] for r in records]
        speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
        last = records[-1]
        parts = sorted((k, v) for k, v in last.items() if k not in RECORD_KEYS and is_number(v))
        scored = [(r["validation"], -r["step"]) for r in records if is_number(r.get("validation"))]
        best = max(scored, default=None)  # as the training loop chooses: the earlier on a tie
        rows.append(
            TrainingRow(
                model=model,
                steps=int(records[-1]["step"]),
                first_loss=losses[0],
                final_loss=losses[-1],
                lowest_loss=min(losses),
                tokens_per_s=statistics.median(speeds) if speeds else None,
                final_parts=tuple(parts),
                chosen=None if best is None else (int(-best[1]), best[0]),
            )
        )
    return rows


def best_teachers(
    accuracy: Mapping[str, Mapping[str, float]], domains: Iterable[str]
) -> dict[str, tuple[str, float]]:
    """Per domain, the teacher most accurate on it (the first on a tie) and its accuracy; a
    domain no teacher was scored on is left out."""
    best = {}
    for domain in domains:
        scored = [(t, a[domain]) for t, a in accuracy.items() if domain in a]
        if scored:
            best[domain] = max(scored, key=lambda pair: pair[1])
    return best


def target_rows(metrics: Metrics) -> list[TargetRow]:
    """The benchmark's targets for the student: `SPECIALIST_SHARE` of the best teacher on each
    domain, a mean over domains above every baseline of `BASELINES_TO_BEAT`, and no more
    parameters than the largest teacher. Empty without a student or teachers."""
    models = metrics.models
    teachers = [m for m in ordered_models(models) if m.startswith("teacher:")]
    if "student" not in models or not teachers:
        return []
    student = models["student"]
    rows = []
    specialists = best_teachers({t: models[t].accuracy for t in teachers}, metrics.domains)
    for domain, (specialist, best) in specialists.items():
        if domain not in student.accuracy:
            continue
        needed, reached = SPECIALIST_SHARE * best, student.accuracy[domain]
        target = f"{domain}: {SPECIALIST_SHARE:.0%} of {specialist} ({100 * best:.1f}%)"
        rows.append(TargetRow(target, needed, reached, reached >= needed, "percent"))
    means = {row.model: row.cells[-1].value for row in metric_table(metrics, "accuracy", True).rows}
    rivals = [m for m in means if m.startswith(BASELINES_TO_BEAT) and means[m] is not None]
    if rivals and means["student"] is not None:
        best_rival = max(rivals, key=lambda m: means[m])
        target = f"mean accuracy above every single, uniform and seqkd baseline ({best_rival})"
        rows.append(
            TargetRow(
                target, means[best_rival], means["student"], means["student"] > means[best_rival],
                "percent",
            )
        )  # fmt: skip
    largest = max(teachers, key=lambda t: models[t].params)
    needed = models[largest].params
    target = f"parameters at most the largest teacher's ({largest})"
    rows.append(TargetRow(target, needed, student.params, student.params <= needed, "count"))
    return rows


def worth_rows(metrics: Metrics) -> list[WorthRow]:
    """One row per `baseline:without:<teacher>` of a run with a student: what each teacher is
    worth on each domain (the price of a model without it). Empty otherwise."""
    models = metrics.models
    if "student" not in models:
        return []
    student = models["student"].accuracy
    rows = []
    for name in ordered_models(models):
        if not name.startswith(WITHOUT):
            continue
        without = models[name].accuracy
        cells = tuple(
            (
                without.get(d),
                student[d] - without[d] if d in without and d in student else None,
            )
            for d in metrics.domains
        )
        rows.append(WorthRow(name.removeprefix(WITHOUT), cells))
    return rows
