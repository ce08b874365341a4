"""The real thing, briefly: distil the bundled SmolLM2 teacher for a few steps (slow)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import potstill


@pytest.mark.slow
def test_default_recipe_on_the_bundled_teacher(tmp_path, capsys):
    code, out, err = potstill(
        "run",
        f"runs_dir={tmp_path}",
        "train.steps=3",
        "train.batch_size=2",
        "train.warmup=1",
        "data.max_heldout_tokens=1024",
        "eval.generate_tokens=8",
        capsys=capsys,
    )
    assert code == 0, err
    run_dir = tmp_path / "shakespeare-smollm2"
    report = json.loads((run_dir / "report.json").read_text())
    teacher, student, baseline = (report["models"][k] for k in ("teacher", "student", "baseline"))
    assert teacher["params"] == 134_515_008
    assert 0.15 < student["params"] / teacher["params"] < 0.40
    assert student["params"] == baseline["params"]
    # A real pretrained teacher is far better on held-out Shakespeare than a 3-step student.
    assert 10 < teacher["perplexity"] < student["perplexity"]
    assert 0 < student["agreement"]["top1"] < 1 and student["agreement"]["kl"] > 0
    assert report["data"]["name"] == "shakespeare" and report["data"]["train_tokens"] > 1e6
    assert report["summary"]["gap_closed"] is not None
    # The embedded default: FitNets and a sampled cache that keeps the teacher's states.
    assert [t["loss"] for t in report["recipe"]["loss"]] == [
        "forward_kl",
        "cross_entropy",
        "hidden_mse",
    ]
    manifest = json.loads((run_dir / "cache" / "manifest.json").read_text())
    assert manifest["fields"]["top_k"]["samples"] == 192
    assert manifest["fields"]["hidden"]["layers"] == [1, 2, 27, 28, 29]
    assert report["break_even"]["unit"] == "generated tokens"
    assert report["models"]["student"]["worst_disagreements"]
    html = (run_dir / "report.html").read_text()
    assert "<img" in html and "perplexity" in html.lower()
    assert "report.html" in out
