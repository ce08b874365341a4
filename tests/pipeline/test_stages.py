"""The staged pipeline on a tiny recipe: a marker per finished stage, skipped when its
inputs match on ``resume``, redone when they changed."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from potstill.config import Recipe, load_recipe
from potstill.data import load_data
from potstill.evaluation.report import Report
from potstill.models.load import load_causal_lm
from potstill.pipeline import RunResult, plan, run, student_stage
from potstill.pipeline import stages as pipeline_stages
from potstill.util.errors import PotstillError
from tests.conftest import tiny_recipe as make_tiny_recipe

HEX64 = set("0123456789abcdef")


def tiny_recipe(runs_dir: Path, teacher_dir: Path, corpus: Path) -> dict[str, Any]:
    return make_tiny_recipe(runs_dir, teacher_dir, corpus, steps=2)


def fingerprints(run_dir: Path) -> dict[str, str]:
    """Stage name -> the fingerprint its marker holds."""
    return {
        path.stem: json.loads(path.read_text())["fingerprint"]
        for path in sorted((run_dir / "stages").glob("*.json"))
    }


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(autouse=True)
def restore_threads():
    """The recipe sets torch's thread count; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_teacher_dir, corpus_file) -> RunResult:
    """One finished run of the tiny recipe; tests resume copies of it."""
    threads = torch.get_num_threads()
    runs = tmp_path_factory.mktemp("first") / "runs"
    result = run(load_recipe(tiny_recipe(runs, tiny_teacher_dir, corpus_file)))
    torch.set_num_threads(threads)
    return result


@pytest.fixture
def resumed(first_run, tmp_path, tiny_teacher_dir, corpus_file):
    """A copy of the finished run in this test's folder, and a function resuming it with
    overrides."""
    shutil.copytree(first_run.run_dir, tmp_path / "runs" / "tiny")
    base = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file)

    def resume(*overrides: str) -> RunResult:
        return run(load_recipe(base, list(overrides)), resume=True)

    return tmp_path / "runs" / "tiny", resume


@pytest.fixture
def trained(monkeypatch) -> list[str]:
    """The names of the models the pipeline trains, in order (training still happens)."""
    names: list[str] = []
    real_train = student_stage.train

    def recording_train(*args, name: str, **kwargs):
        names.append(name)
        return real_train(*args, name=name, **kwargs)

    monkeypatch.setattr(student_stage, "train", recording_train)
    return names


@pytest.fixture
def evaluations(monkeypatch) -> list[list[str]]:
    """The models each evaluation scores (evaluation still happens)."""
    calls: list[list[str]] = []
    real_evaluate = pipeline_stages.evaluate_models

    def recording_evaluate(refs, *args, **kwargs):
        calls.append(list(refs))
        return real_evaluate(refs, *args, **kwargs)

    monkeypatch.setattr(pipeline_stages, "evaluate_models", recording_evaluate)
    return calls


def _fail(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} ran again")

    return fail


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, ["teach", "distill", "baseline", "evaluate", "report"]),
        ({"stages": ["distill", "evaluate", "report"]}, ["distill", "evaluate", "report"]),
        # The pipeline's order, whatever order the recipe lists them in.
        ({"stages": ["report", "evaluate", "teach"]}, ["teach", "evaluate", "report"]),
        # No distillation term: no teacher signal to cache.
        ({"loss": [{"loss": "cross_entropy"}]}, ["distill", "baseline", "evaluate", "report"]),
        (
            {"teach": {"enabled": False}, "eval": {"baseline": False}},
            ["distill", "evaluate", "report"],
        ),
    ],
)
def test_plan_lists_the_stages_the_recipe_asks_for(changes, expected):
    assert plan(Recipe(**changes)) == expected


def test_a_run_leaves_a_marker_per_stage_and_a_cpu_report(first_run):
    run_dir, report = first_run.run_dir, first_run.report
    prints = fingerprints(run_dir)
    assert set(prints) == {"teach", "student", "baseline", "evaluate"}
    assert all(len(p) == 64 and set(p) <= HEX64 for p in prints.values())
    assert len(set(prints.values())) == 4  # each stage has inputs of its own

    student = json.loads((run_dir / "stages" / "student.json").read_text())
    assert student["stage"] == "student" and student["steps"] == 2
    assert report.models["student"].train_seconds == pytest.approx(student["seconds"])
    evaluated = json.loads((run_dir / "stages" / "evaluate.json").read_text())["models"]
    for name in ("teacher", "student", "baseline"):
        assert evaluated[name]["perplexity"] == pytest.approx(report.models[name].perplexity)
        assert math.isfinite(report.models[name].perplexity) and report.models[name].perplexity > 1

    # device=cpu explicitly: the loop trained there, in float32, on the recipe's one thread.
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["run"]["device"] == "cpu" and on_disk["run"]["precision"] == "float32"
    assert on_disk["run"]["threads"] == 1
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["model"], r["step"]) for r in rows] == [
        ("student", 1),
        ("student", 2),
        ("baseline", 1),
        ("baseline", 2),
    ]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert {t.device.type for t in weights(run_dir / "student").values()} == {"cpu"}


def test_the_report_shows_heldout_losses_and_continuations(first_run):
    """The last step's held-out loss is the saved model's mean next-token cross-entropy on
    the first train.eval_blocks held-out blocks; the report holds three held-out prompts
    with the teacher's, the student's and the baseline's continuations."""
    run_dir, report = first_run.run_dir, first_run.report
    recipe = load_recipe(run_dir / "config.yaml")
    data = load_data(recipe.data, load_causal_lm(str(run_dir / "student"))[1])
    first = data.heldout.input_ids[: recipe.train.eval_blocks]
    labels = data.heldout.labels[: recipe.train.eval_blocks]
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for name in ("student", "baseline"):
        logged = [r for r in rows if r["model"] == name and "heldout_loss" in r]
        assert [r["step"] for r in logged] == [2]  # eval_every 10: the last step only
        model = load_causal_lm(str(run_dir / name))[0].eval()
        with torch.no_grad():
            logits = model(input_ids=first).logits.double()  # (N, L, V)
        expected = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
        )
        assert logged[0]["heldout_loss"] == pytest.approx(float(expected), rel=1e-5)

    assert len(data.heldout) >= 3 and len(report.samples) == 3
    tokenizer = load_causal_lm(str(run_dir / "student"))[1]
    blocks = [0, (len(data.heldout) - 1) // 2, len(data.heldout) - 1]
    for sample, block in zip(report.samples, blocks, strict=True):
        assert sample.prompt == tokenizer.decode(data.heldout.input_ids[block, :32].tolist())
        assert list(sample.continuations) == ["teacher", "student", "baseline"]
    assert Report.load(run_dir / "report.json").samples == report.samples
    markdown = (run_dir / "report.md").read_text()
    assert "## Continuations of held-out prompts" in markdown
    assert "| prompt | teacher | student | baseline |" in markdown


def test_the_heldout_cadence_retrains_only_while_rollbacks_can_act(resumed, trained):
    """The held-out checks decide where a rollback goes (`potstill.train.rollback`), so
    their cadence and slice are training inputs, unless rollbacks are off."""
    run_dir, resume = resumed
    resume("train.eval_every=1", "train.eval_blocks=2")
    assert sorted(trained) == ["baseline", "student"]
    resume("train.eval_every=1", "train.eval_blocks=2", "train.rollbacks=0")
    trained.clear()
    before = fingerprints(run_dir)
    resume("train.eval_every=3", "train.eval_blocks=1", "train.rollbacks=0")
    assert trained == [] and fingerprints(run_dir) == before


def test_resuming_the_same_recipe_redoes_nothing(resumed, first_run, monkeypatch):
    run_dir, resume = resumed
    before = fingerprints(run_dir)
    markers = {p.name: p.read_bytes() for p in (run_dir / "stages").iterdir()}
    student = (run_dir / "student" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(student_stage, "train", _fail("training"))
    monkeypatch.setattr(pipeline_stages, "evaluate_models", _fail("evaluation"))
    monkeypatch.setattr("potstill.cache.teach._teach_blocks", _fail("teaching"))

    result = resume()

    assert fingerprints(run_dir) == before
    assert {p.name: p.read_bytes() for p in (run_dir / "stages").iterdir()} == markers
    assert (run_dir / "student" / "model.safetensors").stat().st_mtime_ns == student
    # The report is written again, from the evaluation the marker kept.
    assert isinstance(result.report, Report)
    assert Report.load(run_dir / "report.json") == result.report
    for name in ("teacher", "student", "baseline"):
        assert result.report.models[name].perplexity == first_run.report.models[name].perplexity
        assert result.report.models[name].train_seconds == (
            first_run.report.models[name].train_seconds
        )


def test_changing_eval_settings_redoes_only_evaluate_and_report(
    resumed, first_run, evaluations, monkeypatch
):
    run_dir, resume = resumed
    before = fingerprints(run_dir)
    monkeypatch.setattr(student_stage, "train", _fail("training"))

    result = resume("eval.generate_tokens=3")

    after = fingerprints(run_dir)
    assert evaluations == [["teacher", "student", "baseline"]]
    assert after["evaluate"] != before["evaluate"]
    assert {k: after[k] for k in ("teach", "student", "baseline")} == {
        k: before[k] for k in ("teach", "student", "baseline")
    }
    # Same models, same held-out blocks: the same scores.
    for name in ("teacher", "student", "baseline"):
        assert result.report.models[name].perplexity == pytest.approx(
            first_run.report.models[name].perplexity, rel=1e-6
        )


def test_changing_a_loss_term_retrains_the_student_only(resumed, first_run, trained):
    run_dir, resume = resumed
    before = fingerprints(run_dir)
    old_student = weights(run_dir / "student")
    old_baseline = weights(run_dir / "baseline")

    kd, ce = (
        "{loss: forward_kl, weight: 0.7, temperature: 2.0}",
        "{loss: cross_entropy, weight: 0.3}",
    )
    result = resume(f"loss=[{kd}, {ce}]")

    after = fingerprints(run_dir)
    assert trained == ["student"]
    assert after["student"] != before["student"] and after["evaluate"] != before["evaluate"]
    assert after["baseline"] == before["baseline"] and after["teach"] == before["teach"]
    new_student = weights(run_dir / "student")
    assert any(not torch.equal(new_student[k], old_student[k]) for k in old_student)
    new_baseline = weights(run_dir / "baseline")
    assert all(torch.equal(new_baseline[k], old_baseline[k]) for k in old_baseline)
    assert result.report.recipe["loss"][0] == {
        "loss": "forward_kl",
        "weight": 0.7,
        "temperature": 2.0,
    }
    assert result.report.models["baseline"].perplexity == pytest.approx(
        first_run.report.models["baseline"].perplexity, rel=1e-6
    )


def test_changing_the_learning_rate_retrains_student_and_baseline(resumed, trained):
    run_dir, resume = resumed
    before = fingerprints(run_dir)

    result = resume("train.lr=2.0e-3")

    after = fingerprints(run_dir)
    assert trained == ["student", "baseline"]
    assert after["teach"] == before["teach"]  # the cache does not depend on the optimizer
    assert all(after[k] != before[k] for k in ("student", "baseline", "evaluate"))
    assert result.report.recipe["lr"] == 2.0e-3
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["model"], r["step"]) for r in rows].count(("student", 2)) == 1  # no duplicates


def test_a_deleted_student_is_trained_again_to_the_same_weights(resumed, trained):
    run_dir, resume = resumed
    before = fingerprints(run_dir)
    old_student = weights(run_dir / "student")
    shutil.rmtree(run_dir / "student")

    resume()

    assert trained == ["student"]
    assert fingerprints(run_dir) == before  # same inputs, same fingerprints
    new_student = weights(run_dir / "student")
    assert new_student.keys() == old_student.keys()
    for key, value in old_student.items():
        torch.testing.assert_close(new_student[key], value, rtol=0, atol=1e-6, msg=key)


def test_a_subset_of_stages_then_the_rest(tmp_path, tiny_teacher_dir, corpus_file, trained):
    recipe = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file)
    only_distill = run(load_recipe({**recipe, "stages": ["distill"]}))

    run_dir = only_distill.run_dir
    assert only_distill.report is None
    assert trained == ["student"]
    assert set(fingerprints(run_dir)) == {"student"}
    assert (run_dir / "student" / "config.json").is_file()
    assert not (run_dir / "cache").exists()  # teach was not asked for: the teacher ran live
    assert not (run_dir / "baseline").exists() and not (run_dir / "report.json").exists()
    live_student = fingerprints(run_dir)["student"]

    full = run(load_recipe(recipe), resume=True)

    # The student now learns from the cache, another input: it is trained again.
    assert trained == ["student", "student", "baseline"]
    assert fingerprints(run_dir)["student"] != live_student
    assert set(fingerprints(run_dir)) == {"teach", "student", "baseline", "evaluate"}
    assert full.report.recipe["teacher_signal"]["from"] == "cache"


def test_report_without_evaluate_is_refused_before_anything_is_written(
    tmp_path, tiny_teacher_dir, corpus_file
):
    recipe = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file)
    with pytest.raises(PotstillError, match="report needs evaluate"):
        run(load_recipe({**recipe, "stages": ["distill", "report"]}))
    assert not (tmp_path / "runs").exists()


def test_changing_train_steps_on_resume_teaches_again(resumed, trained):
    run_dir, resume = resumed
    before = fingerprints(run_dir)

    result = resume("train.steps=3")

    assert trained == ["student", "baseline"]
    assert fingerprints(run_dir)["teach"] != before["teach"]
    assert result.report.recipe["steps"] == 3
