"""Writing a report into its run folder: report.json, report.md, report.html, plots/*.png."""

from __future__ import annotations

from pathlib import Path

from potstill.evaluation.report.html import render_html
from potstill.evaluation.report.markdown import render_markdown
from potstill.evaluation.report.plots import make_plots
from potstill.evaluation.report.schema import Report
from potstill.util.io import atomic_write_bytes, atomic_write_json, atomic_write_text


def write_report(
    run_dir: str | Path, report: Report, curves: dict[str, list[dict]] | None = None
) -> dict[str, Path]:
    """Write report.json, report.md, report.html and plots/*.png into `run_dir`.

    `curves` maps a training run ("student", "baseline") to its metrics.jsonl rows: dicts
    with "step" and "loss", optionally "lr", "tokens_per_second", "heldout_loss" and one
    value per loss term ("cross_entropy", "forward_kl", ...). Every file is written
    atomically; `Report.load(run_dir / "report.json")` reads the numbers back. Returns the
    written paths keyed by their path relative to `run_dir`.
    """
    run_dir = Path(run_dir)
    plots = make_plots(report, curves or {})
    written: dict[str, Path] = {}
    for plot in plots:
        key = f"plots/{plot.name}.png"
        atomic_write_bytes(run_dir / key, plot.png)
        written[key] = run_dir / key
    plot_files = list(written)
    atomic_write_json(run_dir / "report.json", report.model_dump(mode="json"))
    atomic_write_text(run_dir / "report.md", render_markdown(report, plot_files=plot_files))
    atomic_write_text(run_dir / "report.html", render_html(report, plots))
    for key in ("report.json", "report.md", "report.html"):
        written[key] = run_dir / key
    return written
