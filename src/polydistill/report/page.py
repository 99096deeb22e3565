"""`write_report(run_dir)`: the run folder's `report.html` and its `plots/*.png`.

    polydistill report runs/demo        (or: from polydistill.report import write_report)

The PNGs are written to `plots/` (a folder replaced whole, so a plot whose input disappeared
does not linger) and embedded in `report.html` as base64 `data:` URIs, so the page opens offline
on its own. `report.html` is written to a temporary file and renamed into place.
"""

import base64
import math
import os
from pathlib import Path

import jinja2

from polydistill.report.inputs import RunInputs, load_run
from polydistill.report.plots import render_plots
from polydistill.report.tables import (
    completions_table,
    mass_table,
    metric_table,
    target_rows,
    training_rows,
    worth_rows,
)
from polydistill.report.template import TEMPLATE
from polydistill.staging import staged_folder

REPORT_FILE = "report.html"
PLOTS_DIR = "plots"


def show(value: float | None, kind: str) -> str:
    """A table value as text: percent (0.875 -> 87.5%), number, share (3 decimals), count."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "percent":
        return f"{100 * value:.1f}%"
    if kind == "share":
        return f"{value:.3f}"
    if kind == "count":
        return f"{round(value):,}"
    if kind == "number":
        return f"{value:.4g}"
    raise ValueError(f"unknown format {kind!r}")


def render_html(inputs: RunInputs, pngs: dict[str, bytes], run_name: str) -> str:
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["show"] = show
    environment.filters["points"] = lambda v: "" if v is None else f"{100 * v:+.1f} pts"
    metrics, contributions = inputs.metrics, inputs.contributions
    domains = metrics.domains
    return environment.from_string(TEMPLATE).render(
        run_name=run_name,
        domains=domains,
        models=list(metrics.models),
        notes=inputs.notes,
        images={name: base64.b64encode(png).decode("ascii") for name, png in pngs.items()},
        accuracy=metric_table(metrics, "accuracy", higher_is_better=True),
        bits_per_byte=metric_table(metrics, "bits_per_byte", higher_is_better=False),
        targets=target_rows(metrics),
        worth=worth_rows(metrics),
        training=training_rows(inputs.train_logs),
        contributions=contributions,
        mass=mass_table(contributions, domains) if contributions else None,
        completions=completions_table(contributions, domains) if contributions else None,
    )


def write_report(run_dir: Path, run_name: str | None = None) -> Path:
    """Write `run_dir/report.html` and `run_dir/plots/`; returns the report's path.

    `run_name` (default: the folder's name) heads the page; a caller writing into a staging
    folder passes the name the folder will have.

    Raises `UserError` when `metrics.json` is missing or malformed, or `contributions.json` is
    present but malformed; absent training logs or contributions are said in the report.
    """
    run_dir = Path(run_dir)
    inputs = load_run(run_dir)
    pngs = render_plots(inputs)
    with staged_folder(run_dir / PLOTS_DIR, replace=True) as plots:
        plots.chmod(run_dir.stat().st_mode & 0o777)  # the run folder's permissions, not 0700
        for name, png in pngs.items():
            (plots / f"{name}.png").write_bytes(png)
    report = run_dir / REPORT_FILE
    partial = run_dir / f".{REPORT_FILE}.partial"
    partial.write_text(
        render_html(inputs, pngs, run_name or run_dir.resolve().name), encoding="utf-8"
    )
    os.replace(partial, report)
    return report
