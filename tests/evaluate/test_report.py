"""build_report / write_report / summary_table on hand-made numbers."""

from __future__ import annotations

import json
import math

import pytest

from potstill.evaluate.report import build_report, gap_closed, summary_table, write_report

RUN = {"name": "tiny", "wall_seconds": 12.5, "device": "cpu", "threads": 2}
DATA = {"name": "shakespeare", "train_tokens": 120_000, "heldout_tokens": 6_000, "split": "5%"}
RECIPE = {
    "loss": [
        {"loss": "forward_kl", "weight": 0.5, "temperature": 2.0},
        {"loss": "cross_entropy", "weight": 0.5},
    ],
    "steps": 300,
    "batch_size": 8,
    "block_size": 256,
    "lr": 3e-4,
}


def entry(params, ppl, tps, agreement=None, **extra) -> dict:
    model = {
        "ref": "local",
        "params": params,
        "size_bytes": params * 4,
        "perplexity": ppl,
        "loss": math.log(ppl) if ppl else None,
        "tokens_per_second": tps,
        **extra,
    }
    if agreement is not None:
        model["agreement"] = {"top1": agreement[0], "kl": agreement[1]}
    return model


def three_models() -> dict[str, dict]:
    return {
        "baseline": entry(25_000_000, 40.0, 80.0, (0.31, 1.9), train_seconds=100.0),
        "teacher": entry(100_000_000, 10.0, 20.0),
        "student": entry(25_000_000, 20.0, 80.0, (0.52, 0.7), train_seconds=150.0),
    }


def test_gap_closed_formula():
    assert gap_closed(10.0, 20.0, 40.0) == pytest.approx(0.5)
    assert gap_closed(10.0, 10.0, 40.0) == pytest.approx(1.0)
    assert gap_closed(10.0, 40.0, 40.0) == pytest.approx(0.0)
    assert gap_closed(10.0, 80.0, 40.0) == pytest.approx(-0.5)
    assert gap_closed(10.0, 5.0, 40.0) == pytest.approx(1.5)
    expected = (math.log(30.0) - math.log(17.0)) / (math.log(30.0) - math.log(12.0))
    assert gap_closed(12.0, 17.0, 30.0) == pytest.approx(expected)
    assert gap_closed(10.0, 20.0, 10.0) is None  # no gap to close
    assert gap_closed(None, 20.0, 40.0) is None
    assert gap_closed(10.0, 20.0, float("nan")) is None


def test_build_report_fills_summary():
    report = build_report(run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    assert list(report["models"]) == ["teacher", "student", "baseline"]
    assert report["potstill_version"] == "0.1.0"
    assert "T" in report["created"]
    summary = report["summary"]
    assert summary["gap_closed"] == pytest.approx(0.5)
    assert summary["student_params_fraction"] == pytest.approx(0.25)
    assert summary["student_vs_baseline_perplexity"] == pytest.approx(0.5)
    assert summary["student_vs_teacher_perplexity"] == pytest.approx(2.0)
    assert summary["student_speedup"] == pytest.approx(4.0)


@pytest.mark.parametrize("missing", [("baseline",), ("teacher",), ("teacher", "baseline")])
def test_missing_teacher_or_baseline(tmp_path, missing):
    models = {k: v for k, v in three_models().items() if k not in missing}
    report = build_report(run=RUN, data=DATA, recipe=RECIPE, models=models)
    assert report["summary"]["gap_closed"] is None
    if "teacher" in missing:
        assert report["summary"]["student_params_fraction"] is None
    paths = write_report(tmp_path, report)
    markdown = paths["report.md"].read_text()
    assert "| student |" in markdown
    assert "Gap closed is not known" in markdown
    assert "student" in summary_table(report)


def test_any_models_no_roles(tmp_path):
    models = {"my-model": entry(1_000, 55.0, None), "other|model": entry(2_000, None, 3.0)}
    report = build_report(run={"name": "eval"}, data={}, recipe={}, models=models)
    assert all(value is None for value in report["summary"].values())
    paths = write_report(tmp_path, report)
    markdown = paths["report.md"].read_text()
    assert "| my-model |" in markdown and "other\\|model" in markdown
    assert "plots/quality_vs_size.png" in paths  # my-model has params and perplexity
    assert "plots/quality_vs_speed.png" not in paths  # nobody has both speed and perplexity


def test_json_round_trip(tmp_path):
    models = three_models()
    models["student"]["perplexity"] = float("inf")  # not JSON: becomes null
    report = build_report(run=RUN, data=DATA, recipe=RECIPE, models=models)
    assert report["models"]["student"]["perplexity"] is None
    paths = write_report(tmp_path, report)
    text = paths["report.json"].read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == report


def test_write_report_files(tmp_path):
    report = build_report(run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    curves = {
        "student": [
            {"step": s, "loss": 3.0 - s / 100, "cross_entropy": 3.2 - s / 90} for s in range(50)
        ],
        "baseline": [{"step": s, "loss": 3.1 - s / 120} for s in range(50)],
    }
    paths = write_report(tmp_path / "runs" / "tiny", report, curves)
    assert set(paths) == {
        "report.json",
        "report.md",
        "report.html",
        "plots/training_curves.png",
        "plots/quality_vs_size.png",
        "plots/quality_vs_speed.png",
    }
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [p for p in (tmp_path / "runs" / "tiny").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_markdown_has_the_table_and_the_headline(tmp_path):
    report = build_report(run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    markdown = write_report(tmp_path, report)["report.md"].read_text()
    header = (
        "| model | params | size (MB) | perplexity | top-1 agreement | KL (nats/token) | tokens/s |"
    )
    assert header in markdown
    assert "| teacher | 100.0M | 400 | 10.00 | – | – | 20.0 |" in markdown
    assert "| student | 25.0M | 100 | 20.00 | 52.0% | 0.700 | 80.0 |" in markdown
    assert "closed 50% of the log-perplexity gap" in markdown
    assert "0.5 × forward_kl (temperature=2.0) + 0.5 × cross_entropy" in markdown
    assert "shakespeare" in markdown and "120,000" in markdown


def test_summary_table_is_fixed_width():
    report = build_report(run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    lines = summary_table(report).splitlines()
    table, rest = lines[:4], lines[4:]
    assert table[0].split() == ["model", "params", "perplexity", "tokens/s"]
    assert [line.split()[0] for line in table[1:]] == ["teacher", "student", "baseline"]
    assert len({len(line) for line in table}) == 1
    assert table[2].split() == ["student", "25.0M", "20.00", "80.0"]
    assert rest == ["gap closed: 50%"]
