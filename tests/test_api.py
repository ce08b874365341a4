"""The Python API: values back, nothing printed unless asked, on tiny in-process models."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import potstill
import potstill.api
from potstill.cache.reader import TeacherCache
from potstill.config import DataConfig, Recipe
from potstill.data import load_data
from potstill.evaluation.report import Report
from potstill.evaluation.report.schema import SCHEMA_VERSION
from potstill.models.load import load_causal_lm
from potstill.pipeline import RunResult
from potstill.util.errors import PotstillError
from tests.conftest import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def recipe(tmp_path, tiny_teacher_dir, corpus_file) -> dict:
    return tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file)


@pytest.fixture
def recipe_path(tmp_path, recipe) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_run_returns_the_typed_report(recipe_path):
    # potstill.run("recipes/hinton-classic.yaml", train__steps=2).report.models["student"]
    result = potstill.run(recipe_path, train__steps=2)

    assert isinstance(result, RunResult) and isinstance(result.report, Report)
    report = result.report
    assert report.schema_version == SCHEMA_VERSION == 3
    perplexity = report.models["student"].perplexity
    assert isinstance(perplexity, float) and math.isfinite(perplexity) and perplexity > 1
    assert list(report.models) == ["teacher", "student", "baseline"]
    assert report.run.device == "cpu" and report.recipe["steps"] == 2
    assert result.run_dir == Path(recipe_path.parent / "runs" / "tiny")
    assert result.html.is_file()
    assert Report.load(result.run_dir / "report.json") == report
    # The override reached the run: two steps trained, and saved in the resolved recipe.
    assert potstill.load_recipe(result.run_dir / "config.yaml").train.steps == 2
    rows = [json.loads(r) for r in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["model"] == "student"] == [1, 2]
    # The yaml file itself is left as it was.
    assert yaml.safe_load(recipe_path.read_text())["train"]["steps"] == 3


def test_a_quiet_run_prints_nothing_and_a_verbose_one_logs(recipe, capfd):
    capfd.readouterr()  # whatever the fixtures printed while building the teacher
    result = potstill.run(recipe)
    # Nothing at all, on either stream (transformers' progress bars included).
    assert capfd.readouterr() == ("", "")
    assert result.report.models["student"].perplexity > 1

    with pytest.raises(PotstillError, match="already exists; pass --resume"):
        potstill.run(recipe)
    again = potstill.run(recipe, resume=True, verbose=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert "student: already trained, skipping" in err
    assert "evaluate: already done for these models, skipping" in err
    assert again.report.models["student"].perplexity == result.report.models["student"].perplexity

    potstill.run(recipe, resume=True)  # verbose is off again after a verbose call
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("overrides", "read", "expected"),
    [
        ({"train__steps": 2}, lambda r: r.train.steps, 2),
        ({"student__adapter": "lora", "student__lora__r": 4}, lambda r: r.student.lora.r, 4),
        ({"eval__baseline": False}, lambda r: r.eval.baseline, False),
        ({"train__threads": None}, lambda r: r.train.threads, None),
        ({"name": "007"}, lambda r: r.name, "007"),  # text that reads as a number stays text
        ({"teach__blocks": "all"}, lambda r: r.teach.blocks, "all"),
        (
            {"loss": [{"loss": "reverse_kl", "temperature": 1.5}]},
            lambda r: [(t.loss, t.weight, t.temperature) for t in r.terms],
            [("reverse_kl", 1.0, 1.5)],
        ),
    ],
)
def test_load_recipe_takes_keyword_overrides(recipe, overrides, read, expected):
    assert read(potstill.load_recipe(recipe, **overrides)) == expected
    assert read(potstill.load_recipe(Recipe(**recipe), **overrides)) == expected


def test_load_recipe_names_a_mistyped_override(recipe):
    with pytest.raises(PotstillError, match=r"unknown key train.stesp; did you mean train.steps"):
        potstill.load_recipe(recipe, train__stesp=3)
    assert potstill.load_recipe().name == Recipe().name  # None: the embedded default


def test_teach_then_distill_trains_from_the_cache(recipe, monkeypatch):
    cache = potstill.teach(recipe)

    assert isinstance(cache, TeacherCache)
    manifest = cache.manifest
    # 3 steps of 2 blocks out of ~170: six distinct blocks, 15 predictions each.
    assert manifest.complete and len(manifest.plan) == 6 == len(set(manifest.plan))
    assert manifest.tokens == 6 * (16 - 1)
    # The schema's cache: 192 draws per token, no top-k (forward KL at one temperature).
    assert (manifest.top_k, manifest.samples, manifest.temperature) == (0, 192, 2.0)

    def no_live_teacher(*args, **kwargs):
        raise AssertionError("the live teacher ran")

    monkeypatch.setattr("potstill.teachers.LiveTeacher.outputs", no_live_teacher)
    student = potstill.distill(recipe)
    run_dir = Path(recipe["runs_dir"]) / "tiny"
    assert student == run_dir / "student" and (student / "config.json").is_file()
    marker = json.loads((run_dir / "stages" / "student.json").read_text())
    assert marker["steps"] == 3

    with pytest.raises(PotstillError, match="--resume"):
        potstill.distill(recipe)

    def no_training(*args, **kwargs):
        raise AssertionError("the finished student trained again")

    monkeypatch.setattr("potstill.pipeline.student_stage.train", no_training)
    assert potstill.distill(recipe, resume=True) == student


def test_evaluate_scores_models_against_the_teacher(tiny_teacher_dir, corpus_file, tmp_path):
    teacher = str(tiny_teacher_dir)
    report = potstill.api.evaluate(
        {"copy": teacher},
        teacher=teacher,
        data=str(corpus_file),
        out=tmp_path / "ev",
        block_size=16,
        heldout=0.1,
        generate_tokens=2,
        device="cpu",
    )

    assert isinstance(report, Report) and list(report.models) == ["teacher", "copy"]
    copy = report.models["copy"]
    assert copy.agreement.top1 == 1.0 and copy.agreement.kl == pytest.approx(0.0, abs=1e-6)
    assert report.models["teacher"].agreement is None
    assert Report.load(tmp_path / "ev" / "report.json") == report

    # Perplexity against an independent float64 computation on the same held-out blocks.
    model, tokenizer = load_causal_lm(teacher)
    cfg = DataConfig(path=str(corpus_file), block_size=16, heldout=0.1)
    heldout = load_data(cfg, tokenizer).heldout
    with torch.no_grad():
        logits = model(input_ids=heldout.input_ids).logits[:, :-1].double()  # (N, L-1, V)
    nll = F.cross_entropy(logits.flatten(0, 1), heldout.labels[:, 1:].flatten(), ignore_index=-100)
    assert copy.perplexity == pytest.approx(math.exp(float(nll)), rel=1e-5)
    assert report.data.heldout_tokens == heldout.num_tokens

    with pytest.raises(PotstillError, match="already holds a report"):
        potstill.api.evaluate([teacher], out=tmp_path / "ev", block_size=16, heldout=0.1)


def test_evaluate_names_a_list_of_models_in_order(tiny_teacher_dir, corpus_file):
    ref = str(tiny_teacher_dir)
    report = potstill.api.evaluate(
        [ref, ref], data=str(corpus_file), block_size=16, heldout=0.1, generate_tokens=2
    )
    assert list(report.models) == ["model1", "model2"]
    assert report.models["model1"].perplexity == report.models["model2"].perplexity
    assert report.models["model1"].agreement is None  # no teacher given


def test_potstill_evaluate_is_the_api_function():
    importlib.import_module("potstill.evaluation.lm")  # a subpackage must not shadow it
    assert potstill.run is potstill.api.run
    assert potstill.evaluate is potstill.api.evaluate
