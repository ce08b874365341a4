"""The report's plots, drawn with matplotlib's Agg canvas (no pyplot, no display).

Training curves (KD student against the no-KD baseline), quality against size, quality
against speed, and for a classification run the confusion matrices. Quality is held-out
perplexity, or accuracy for a classification or chain-of-thought run (by `report.kind`).
Each is returned as PNG bytes with its alt text.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from potstill.evaluation.report.schema import ModelEntry, Report
from potstill.evaluation.report.units import fmt_params

ROLE_COLORS = {"teacher": "#4d4d4d", "student": "#1f77b4", "baseline": "#ff7f0e"}
HELDOUT_TITLE = "held-out loss (dashed: train CE)"
OTHER_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")


@dataclass
class Plot:
    """One picture: `name` is the file stem under plots/, `alt` describes it in words."""

    name: str
    png: bytes
    alt: str
    caption: str
    wide: bool = False  # spans the page; the others sit side by side


def make_plots(report: Report, curves: dict[str, list[dict]]) -> list[Plot]:
    """Every plot the data allows for the report's kind; one with nothing to draw is left
    out."""
    plots = [training_curves(curves), quality_vs_size(report), quality_vs_speed(report)]
    if report.kind == "classify":
        plots.append(confusion_matrices(report))
    return [plot for plot in plots if plot is not None]


def training_curves(curves: dict[str, list[dict]]) -> Plot | None:
    """Loss against step for each training run.

    The cross-entropy term on the hard labels is what the KD student and the baseline
    share, so it gets its own panel; the total loss and (when logged) the held-out loss
    follow, the held-out loss with each run's training cross-entropy dashed beside it (the
    same quantity on seen and unseen text: a widening gap is overfitting). The baseline
    trains on hard labels only, so its total loss is its CE.
    """
    panels: list[tuple[str, dict[str, tuple[list[float], list[float]]]]] = []
    ce = {run: _series(rows, _ce_key(run, rows)) for run, rows in curves.items()}
    panels.append(("cross-entropy on hard labels (train)", ce))
    panels.append(("total training loss", {run: _series(r, "loss") for run, r in curves.items()}))
    heldout = {run: _series(r, "heldout_loss") for run, r in curves.items()}
    panels.append((HELDOUT_TITLE, heldout))
    panels = [(title, {r: s for r, s in runs.items() if s[0]}) for title, runs in panels]
    panels = [(title, runs) for title, runs in panels if runs]
    if not panels:
        return None

    figure = _figure(width=4.2 * len(panels) + 0.6, height=3.8)
    colors = _colors(curves)
    for index, (title, runs) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), index + 1)
        for run, (steps, values) in runs.items():
            color = colors[run]
            if len(values) > 30:  # noisy per-step losses: faint raw line, smoothed on top
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(steps, _ema(values, span=max(5, len(values) // 20)), color=color, label=run)
            else:
                ax.plot(steps, values, color=color, label=run, marker="o", markersize=3)
            if title == HELDOUT_TITLE and ce[run][0]:  # the training CE beside it
                train_steps, train_ce = ce[run]
                ax.plot(
                    train_steps,
                    _ema(train_ce, span=max(5, len(train_ce) // 20)),
                    color=color,
                    linestyle="--",
                    linewidth=0.9,
                    alpha=0.7,
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    names = " and ".join(curves)
    return Plot(
        name="training_curves",
        png=_png(figure),
        alt=f"Training loss against step for {names}: "
        + "; ".join(title for title, _ in panels)
        + ".",
        wide=True,
        caption="Training curves. Cross-entropy on the hard labels is comparable across runs; "
        "the total loss includes each run's own loss terms. The held-out loss is the same "
        "cross-entropy on the first train.eval_blocks held-out blocks, every "
        "train.eval_every steps: rising while the training loss falls means overfitting.",
    )


def quality_vs_size(report: Report) -> Plot | None:
    """Quality against parameter count, one labelled point per model."""
    quality = _quality(report)
    points = _points(report, lambda entry: entry.params, quality)
    if not points:
        return None
    figure = _figure(width=6.4, height=4.4)
    ax = figure.add_subplot(1, 1, 1)
    _scatter(ax, points, report, quality)
    _log_axis_if_wide(ax, "x", [x for _, x, _ in points], fmt_params)
    ax.set_xlabel("parameters")
    ax.set_ylabel(quality.axis)
    ax.set_title("Quality against size", fontsize=10)
    _better(ax, f"{quality.better_y} left is better", x=0.02, ha="left")
    figure.tight_layout()
    described = ", ".join(
        f"{n}: {fmt_params(x)} params, {quality.name} {quality.text(y)}" for n, x, y in points
    )
    return Plot(
        name="quality_vs_size",
        png=_png(figure),
        alt=f"Scatter of {quality.axis} against parameter count. {described}.",
        caption=f"Quality against size: each model's {quality.name} and parameter count.",
    )


def quality_vs_speed(report: Report) -> Plot | None:
    """Quality against batch-1 speed (generation, or classification), one point per model."""
    quality = _quality(report)
    if quality.name == "accuracy":
        points = _points(report, lambda e: (e.examples_per_second or {}).get("1"), quality)
        unit, what = "examples/s", "classification speed (examples/s, batch 1, this machine)"
    else:
        points = _points(report, lambda entry: entry.tokens_per_second, quality)
        unit, what = "tokens/s", "generation speed (tokens/s, batch 1, this machine)"
    if not points:
        return None
    figure = _figure(width=6.4, height=4.4)
    ax = figure.add_subplot(1, 1, 1)
    _scatter(ax, points, report, quality)
    if quality.name == "accuracy":  # students and teacher differ by orders of magnitude
        _log_axis_if_wide(ax, "x", [x for _, x, _ in points], lambda x: f"{x:g}")
    else:
        ax.set_xlim(left=0)
    ax.set_xlabel(what)
    ax.set_ylabel(quality.axis)
    ax.set_title("Quality against speed", fontsize=10)
    _better(ax, f"{quality.better_y} right is better", x=0.98, ha="right")
    figure.tight_layout()
    described = ", ".join(
        f"{n}: {x:.1f} {unit}, {quality.name} {quality.text(y)}" for n, x, y in points
    )
    return Plot(
        name="quality_vs_speed",
        png=_png(figure),
        alt=f"Scatter of {quality.axis} against {what}. {described}.",
        caption=f"Quality against speed: {quality.name} and batch-1 speed.",
    )


def confusion_matrices(report: Report) -> Plot | None:
    """One panel per model: test-set counts of gold label (rows) against prediction."""
    labels = report.recipe.get("labels")
    matrices = {n: e.confusion for n, e in report.models.items() if e.confusion}
    if not matrices or not isinstance(labels, list):
        return None
    size = len(labels)
    cols = min(len(matrices), 3)
    rows = (len(matrices) + cols - 1) // cols
    cell = max(2.6, 0.45 * size + 1.4)
    figure = _figure(width=cell * cols + 0.4, height=cell * rows + 0.2)
    ticks = [str(label)[:12] for label in labels]
    for index, (name, matrix) in enumerate(matrices.items()):
        ax = figure.add_subplot(rows, cols, index + 1)
        top = max(max(row) for row in matrix) or 1
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=top)
        for g in range(size):
            for p in range(size):
                color = "white" if matrix[g][p] > top / 2 else "#1a1a1a"
                ax.text(p, g, str(matrix[g][p]), ha="center", va="center", color=color)
        ax.set_xticks(range(size), ticks, rotation=45 if size > 3 else 0, fontsize=8)
        ax.set_yticks(range(size), ticks, fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("gold", fontsize=8)
    figure.tight_layout()
    described = "; ".join(
        f"{name}: {sum(matrix[i][i] for i in range(size))} of "
        f"{sum(map(sum, matrix))} on the diagonal"
        for name, matrix in matrices.items()
    )
    return Plot(
        name="confusion",
        png=_png(figure),
        alt=f"Confusion matrices (gold label by row, prediction by column). {described}.",
        caption="Confusion matrices on the test set: rows are the gold labels, columns the "
        "predictions; the diagonal is correct.",
        wide=True,
    )


@dataclass
class _Quality:
    """What the y axis shows: perplexity (lower is better) or accuracy (higher is)."""

    name: str
    axis: str
    better_y: str

    def value(self, entry: ModelEntry) -> float | None:
        return entry.accuracy if self.name == "accuracy" else entry.perplexity

    def text(self, y: float) -> str:
        return f"{y:.1%}" if self.name == "accuracy" else f"{y:.2f}"


def _quality(report: Report) -> _Quality:
    if report.kind in ("classify", "reason"):
        return _Quality("accuracy", "test accuracy (higher is better)", "upper")
    return _Quality("perplexity", "held-out perplexity (lower is better)", "lower")


# ---- helpers -----------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _colors(names: Any) -> dict[str, str]:
    others = iter(OTHER_COLORS * 10)
    return {name: ROLE_COLORS.get(name) or next(others) for name in names}


def _ce_key(run: str, rows: list[dict]) -> str:
    for key in ("cross_entropy", "ce"):
        if any(key in row for row in rows):
            return key
    return "loss" if run == "baseline" else "cross_entropy"


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) for the rows that hold a finite number under `key`."""
    steps, values = [], []
    for row in rows:
        step, value = row.get("step"), row.get(key)
        if _finite(step) and _finite(value):
            steps.append(float(step))
            values.append(float(value))
    return steps, values


def _ema(values: list[float], span: int) -> list[float]:
    alpha = 2.0 / (span + 1)
    smoothed, current = [], values[0]
    for value in values:
        current = alpha * value + (1 - alpha) * current
        smoothed.append(current)
    return smoothed


def _points(
    report: Report, x_of: Callable[[ModelEntry], Any], quality: _Quality
) -> list[tuple[str, float, float]]:
    """(name, x, quality) for models that have both, positive and finite."""
    points = []
    for name, entry in report.models.items():
        x, y = x_of(entry), quality.value(entry)
        if _finite(x) and _finite(y) and x > 0 and y > 0:
            points.append((name, float(x), float(y)))
    return points


def _scatter(
    ax: Any, points: list[tuple[str, float, float]], report: Report, quality: _Quality
) -> None:
    colors = _colors(report.models)
    for name, x, y in points:
        ax.scatter([x], [y], s=60, color=colors[name], zorder=3)
        ax.annotate(name, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=9)
    if quality.name == "perplexity":
        # Perplexity is exp(loss): when it spans a wide range, a log axis shows the loss gap.
        _log_axis_if_wide(ax, "y", [y for _, _, y in points], lambda y: f"{y:g}")
    else:
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.margins(x=0.25, y=0.2)
    ax.grid(alpha=0.3, which="major")
    ax.grid(alpha=0.1, which="minor")


def _log_axis_if_wide(
    ax: Any, which: str, values: list[float], label: Callable[[float], str]
) -> None:
    """Log scale on axis `which` ("x" or "y") when the values span more than 5×, with
    ticks at 1-2-5 steps; tick labels written by `label`."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    if max(values) / min(values) > 5:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(FuncFormatter(lambda value, _: label(value)))


def _better(ax: Any, text: str, x: float, ha: str) -> None:
    ax.text(x, 0.03, text, transform=ax.transAxes, ha=ha, fontsize=8, color="#666666")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
