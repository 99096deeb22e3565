"""The report's PNG plots, drawn with matplotlib's Agg canvas (no pyplot, no display, no state).

    pngs = render_plots(inputs)   # {"accuracy": b"\\x89PNG...", "loss": ..., ...}

- `loss`: training loss per step, one line per model with a training log (faint: every step;
  solid: a trailing mean), log scale when the losses span more than a factor of 20;
- `accuracy`: held-out accuracy per domain, one bar per model in each domain's group;
- `contributions`: per domain, each teacher's share of the fused target mass, stacked;
- `tail`: per teacher, the mean share of its mass that projection left in the tail.

Plots whose input is absent are left out. The data behind the bars comes from `grouped_bars` and
`stacked_shares`, which the tests check directly.
"""

import io
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from polydistill.report.inputs import Contributions, Metrics, RunInputs
from polydistill.report.tables import ordered_models

DPI = 110
LOG_SCALE_SPAN = 20.0  # max/min loss beyond which the loss axis is logarithmic
SMOOTHING_POINTS = 25  # a trailing mean over about 1/25 of the steps


def grouped_bars(metrics: Metrics, key: str) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Domains, and per model (report order) its `key` value in each domain (NaN if missing)."""
    series = [
        (model, [getattr(metrics.models[model], key).get(d, math.nan) for d in metrics.domains])
        for model in ordered_models(metrics.models)
    ]
    return list(metrics.domains), series


def stacked_shares(
    contributions: Contributions, domains: list[str]
) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Domains with a mass entry, and per teacher its share of the fused mass in each (or 0)."""
    shown = [d for d in domains if d in contributions.mass]
    layers = [
        (teacher, [contributions.mass[d].get(teacher, 0.0) for d in shown])
        for teacher in contributions.teachers
    ]
    return shown, layers


def model_colors(models: list[str]) -> dict[str, tuple]:
    """A distinct colour per model, stable for a given list (tab20 after the first ten)."""
    palette = [*colormaps["tab10"].colors, *colormaps["tab20"].colors[1::2]]
    return {model: palette[i % len(palette)] for i, model in enumerate(models)}


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No "Software" metadata: the same inputs give byte-identical files.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _legend_outside(axes: Axes) -> None:
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")


def trailing_mean(values: list[float], window: int) -> np.ndarray:
    """Mean of each value and the `window - 1` before it (fewer at the start)."""
    sums = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=np.float64))])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def loss_plot(logs: dict[str, list[dict[str, float]]]) -> bytes:
    models = ordered_models(logs)
    colors = model_colors(models)
    figure = Figure(figsize=(8.5, 4.2), layout="constrained")
    axes = figure.add_subplot()
    every_loss: list[float] = []
    for model in models:
        steps = [r["step"] for r in logs[model]]
        losses = [r["loss"] for r in logs[model]]
        every_loss += losses
        window = max(1, len(losses) // SMOOTHING_POINTS)
        if window > 1:
            axes.plot(steps, losses, color=colors[model], alpha=0.25, linewidth=0.8)
        axes.plot(steps, trailing_mean(losses, window), color=colors[model], label=model)
    finite = [v for v in every_loss if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > LOG_SCALE_SPAN:
        axes.set_yscale("log")
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("training loss (per token)")
    axes.set_title("Training loss")
    axes.grid(alpha=0.3)
    _legend_outside(axes)
    return _png(figure)


def accuracy_plot(metrics: Metrics) -> bytes:
    domains, series = grouped_bars(metrics, "accuracy")
    colors = model_colors([model for model, _ in series])
    width = 0.8 / len(series)
    size = (max(7.0, 2.5 + 0.22 * len(series) * len(domains)), 4.2)
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.add_subplot()
    centers = np.arange(len(domains))
    for i, (model, values) in enumerate(series):
        offsets = centers - 0.4 + width * (i + 0.5)
        student = model == "student"
        axes.bar(
            offsets,
            values,
            width,
            label=model,
            color=colors[model],
            edgecolor="black" if student else "none",
            linewidth=1.2 if student else 0,
        )
    axes.set_xticks(centers, domains)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("exact-match accuracy (held-out)")
    axes.set_title("Accuracy per domain")
    axes.grid(axis="y", alpha=0.3)
    _legend_outside(axes)
    return _png(figure)


def teacher_colors(contributions: Contributions) -> dict[str, tuple]:
    return model_colors(list(contributions.teachers))


def contribution_plot(contributions: Contributions, domains: list[str]) -> bytes:
    shown, layers = stacked_shares(contributions, domains)
    colors = teacher_colors(contributions)
    figure = Figure(figsize=(max(6.0, 2.5 + 1.1 * len(shown)), 4.2), layout="constrained")
    axes = figure.add_subplot()
    bottom = np.zeros(len(shown))
    for teacher, shares in layers:
        axes.bar(shown, shares, 0.6, bottom=bottom, label=teacher, color=colors[teacher])
        bottom += np.asarray(shares)
    axes.set_ylim(0, 1.02)
    axes.set_ylabel("share of fused target mass")
    axes.set_title(f"Teacher contribution per domain ({contributions.strategy})")
    _legend_outside(axes)
    return _png(figure)


def tail_plot(contributions: Contributions) -> bytes:
    teachers = [t for t in contributions.teachers if t in contributions.tail]
    colors = teacher_colors(contributions)
    figure = Figure(figsize=(max(5.0, 2.0 + 1.0 * len(teachers)), 3.6), layout="constrained")
    axes = figure.add_subplot()
    shares = [contributions.tail[t] for t in teachers]
    axes.bar(teachers, shares, 0.6, color=[colors[t] for t in teachers])
    for x, share in enumerate(shares):
        axes.annotate(f"{share:.3f}", (x, share), ha="center", va="bottom", fontsize="small")
    axes.set_ylim(0, max([*shares, 0.01]) * 1.2)
    axes.set_ylabel("mean tail share after projection")
    axes.set_title("Mass projection could not place, per teacher")
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def render_plots(inputs: RunInputs) -> dict[str, bytes]:
    """Every plot whose input exists, as PNG bytes, keyed by plot name."""
    pngs = {}
    if inputs.train_logs:
        pngs["loss"] = loss_plot(inputs.train_logs)
    pngs["accuracy"] = accuracy_plot(inputs.metrics)
    contributions = inputs.contributions
    if contributions is not None and contributions.mass:
        pngs["contributions"] = contribution_plot(contributions, inputs.metrics.domains)
    if contributions is not None and contributions.tail:
        pngs["tail"] = tail_plot(contributions)
    return pngs
