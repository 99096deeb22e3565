"""What a run report reads from a run folder, checked.

    inputs = load_run(Path("runs/demo"))

- `metrics.json` (required): accuracy and bits per byte per model and domain, parameter counts.
  Missing or malformed -> `UserError` naming the file and the problem.
- `train_logs/<model>.jsonl` (optional; `:` in the model name written as `__`), and the older
  `train_log.jsonl` at the top of the folder as the student's log. Lines a killed run tore are
  skipped and counted in `notes`.
- `contributions.json` (optional): which teacher supplied how much target mass per domain, whose
  completions were used, and the projection tail per teacher. Present but malformed -> `UserError`.

Whatever optional input is absent is said in `notes`, so the report can say it too.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from polydistill.errors import UserError

METRICS_FILE = "metrics.json"
CONTRIBUTIONS_FILE = "contributions.json"
TRAIN_LOGS_DIR = "train_logs"
LEGACY_STUDENT_LOG = "train_log.jsonl"
SHARES_SUM_TOLERANCE = 1e-3

Share = Annotated[float, Field(ge=0.0, le=1.0)]


def _not_negative(value: float) -> float:
    # NaN passes: a diverged model's bits per byte is shown as such, not refused.
    if value < 0:
        raise ValueError("must not be negative")
    return value


class ModelMetrics(BaseModel):
    """One model's scores; other keys a later pipeline adds are kept and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)

    accuracy: dict[str, Share]
    bits_per_byte: dict[str, Annotated[float, AfterValidator(_not_negative)]]
    params: Annotated[int, Field(gt=0)]


class Metrics(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    domains: Annotated[list[str], Field(min_length=1)]
    models: Annotated[dict[str, ModelMetrics], Field(min_length=1)]

    @field_validator("domains")
    @classmethod
    def _distinct(cls, domains: list[str]) -> list[str]:
        if len(set(domains)) != len(domains):
            raise ValueError("domains repeat")
        return domains

    @field_validator("models")
    @classmethod
    def _known_names(cls, models: dict[str, ModelMetrics]) -> dict[str, ModelMetrics]:
        for name in models:
            kind, _, rest = name.partition(":")
            if name != "student" and not (kind in ("teacher", "baseline") and rest):
                raise ValueError(
                    f"model name {name!r} is none of student, teacher:<name>, baseline:<name>"
                )
        return models


class Contributions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    strategy: str
    teachers: Annotated[list[str], Field(min_length=1)]
    share: dict[str, Share] = {}  # over all positions; runs before it have per-domain mass only
    mass: dict[str, dict[str, Share]]
    completions: dict[str, dict[str, Annotated[int, Field(ge=0)]]] = {}
    tail: dict[str, Share] = {}
    examples: list[dict[str, Any]] = []


@dataclass
class RunInputs:
    run_dir: Path
    metrics: Metrics
    train_logs: dict[str, list[dict[str, float]]]  # model -> records in step order
    contributions: Contributions | None
    notes: list[str] = field(default_factory=list)  # absent or partly unreadable inputs


def load_run(run_dir: Path) -> RunInputs:
    """Read and check everything the report shows; raises `UserError` on bad required input."""
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    notes: list[str] = []
    metrics = load_metrics(run_dir / METRICS_FILE)
    logs = load_train_logs(run_dir, notes)
    contributions = load_contributions(run_dir / CONTRIBUTIONS_FILE, metrics.domains)
    if contributions is None:
        notes.append(f"no {CONTRIBUTIONS_FILE}: this run has no teacher contributions to show")
    return RunInputs(run_dir, metrics, logs, contributions, notes)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read it ({error})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not JSON ({error})") from None


def _validation_message(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{path}: {where or 'top level'}: {first['msg'].removeprefix('Value error, ')}"


def load_metrics(path: Path) -> Metrics:
    if not path.is_file():
        raise UserError(f"{path} is missing; is this the output folder of `polydistill run`?")
    try:
        metrics = Metrics.model_validate(_read_json(path))
    except ValidationError as error:
        raise UserError(_validation_message(path, error)) from None
    for name, model in metrics.models.items():
        for key in ("accuracy", "bits_per_byte"):
            unknown = sorted(set(getattr(model, key)) - set(metrics.domains))
            if unknown:
                raise UserError(
                    f"{path}: models.{name}.{key}: domain {unknown[0]!r} not in domains"
                )
    return metrics


def _drop_examples(pairs: list[tuple[str, Any]]) -> dict[str, Any] | None:
    """JSON objects as dicts, but a fusion example (one per training row, which the report does
    not read) as None while it is parsed: a run's memory must not grow with its prompts."""
    found = dict(pairs)
    return None if "completion_by" in found else found


def load_contributions(path: Path, domains: list[str]) -> Contributions | None:
    if not path.exists():
        return None
    try:
        with path.open(encoding="utf-8") as f:
            raw = json.load(f, object_pairs_hook=_drop_examples)
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read it ({error})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not JSON ({error})") from None
    if isinstance(raw, dict):
        raw.pop("examples", None)
    try:
        contributions = Contributions.model_validate(raw)
    except ValidationError as error:
        raise UserError(_validation_message(path, error)) from None
    teachers = set(contributions.teachers)
    per_teacher = {"mass": contributions.mass, "completions": contributions.completions}
    for key, table in per_teacher.items():
        for domain, row in table.items():
            if domain not in domains:
                raise UserError(f"{path}: {key}.{domain}: domain not in metrics.json")
            strangers = sorted(set(row) - teachers)
            if strangers:
                raise UserError(f"{path}: {key}.{domain}: unknown teacher {strangers[0]!r}")
    for domain, shares in contributions.mass.items():
        total = math.fsum(shares.values())
        if abs(total - 1.0) > SHARES_SUM_TOLERANCE:
            raise UserError(f"{path}: mass.{domain}: shares sum to {total:.4f}, not 1")
    strangers = sorted(set(contributions.tail) - teachers)
    if strangers:
        raise UserError(f"{path}: tail: unknown teacher {strangers[0]!r}")
    return contributions


def load_train_logs(run_dir: Path, notes: list[str]) -> dict[str, list[dict[str, float]]]:
    """Every model's training records; file names `<model>.jsonl` with `:` written as `__`."""
    paths = {
        p.stem.replace("__", ":"): p for p in sorted((run_dir / TRAIN_LOGS_DIR).glob("*.jsonl"))
    }
    legacy = run_dir / LEGACY_STUDENT_LOG
    if "student" not in paths and legacy.is_file():
        paths["student"] = legacy
    logs: dict[str, list[dict[str, float]]] = {}
    for model, path in paths.items():
        records, torn = read_records(path)
        relative = path.relative_to(run_dir)
        if torn:
            notes.append(f"{relative}: {torn} unreadable line(s) skipped")
        if records:
            logs[model] = records
        else:
            notes.append(f"{relative}: no training steps in it")
    if not paths:
        notes.append(f"no training logs ({TRAIN_LOGS_DIR}/*.jsonl): no loss curves to show")
    return logs


def read_records(path: Path) -> tuple[list[dict[str, float]], int]:
    """The records with a numeric `step` and `loss`, in step order, and how many lines were not."""
    records: dict[float, dict[str, float]] = {}
    torn = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if not (isinstance(record, dict) and is_number(record.get("step"))):
            torn += 1
        elif is_number(record.get("loss")):
            records[record["step"]] = record  # a resumed run's repeat of a step replaces it
        else:
            torn += 1
    return [records[step] for step in sorted(records)], torn


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
