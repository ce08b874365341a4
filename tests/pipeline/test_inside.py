"""Hidden-state and attention terms through the whole run: layer maps resolved and
checked before anything is taught, projections trained and checkpointed beside the
student and never saved with it."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors import safe_open

from potstill.losses import LossTerm
from potstill.models.load import load_causal_lm
from potstill.models.settings import StudentConfig
from potstill.models.student import build_student
from potstill.tasks.causal_lm import prepare_inside, resolve_inside
from potstill.util.errors import PotstillError
from tests.conftest import make_llama, run_cli, tiny_recipe

KD = [{"loss": "forward_kl", "weight": 0.5}, {"loss": "cross_entropy", "weight": 0.5}]


def _recipe(tmp_path, teacher_dir, corpus, loss, **student) -> str:
    recipe = tiny_recipe(tmp_path / "runs", teacher_dir, corpus, steps=4)
    recipe["loss"] = [*KD, *loss]
    recipe["teach"] = {"enabled": False}
    if student:
        recipe["student"] = student
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_projections_train_beside_the_student_and_never_reach_it(
    tmp_path, tiny_teacher_dir, corpus_file, capsys, monkeypatch
):
    loss = [{"loss": "hidden_mse", "weight": 1.0, "layers": {1: 2}}]
    fresh = {"fresh": {"hidden_size": 16, "num_layers": 2, "num_heads": 2}}
    recipe = _recipe(tmp_path, tiny_teacher_dir, corpus_file, loss, **fresh)
    saved: list[list[str] | None] = []
    import potstill.train.loop as loop

    real_save = loop.save_checkpoint

    def spy(directory, model, optimizer, scheduler, state, *, extra=None, also=None):
        saved.append(sorted(extra) if extra is not None else None)
        return real_save(directory, model, optimizer, scheduler, state, extra=extra, also=also)

    monkeypatch.setattr(loop, "save_checkpoint", spy)
    code, _, err = run_cli("run", recipe, capsys=capsys)
    assert code == 0, err
    assert saved == [["s1"], None]  # the student's projection is checkpointed with it
    run = tmp_path / "runs" / "tiny"
    with safe_open(run / "student" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any("s1" in k or "projection" in k for k in keys)
    student, _ = load_causal_lm(str(run / "student"))
    assert student.config.hidden_size == 16  # the student's own width, not the teacher's
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    parts = [r["hidden_mse"] for r in rows if r["model"] == "student"]
    assert len(parts) == 4 and all(p > 0 for p in parts)
    assert all("hidden_mse" not in r for r in rows if r["model"] == "baseline")


def test_attention_terms_train_through_the_run(tmp_path, tiny_teacher_dir, corpus_file, capsys):
    loss = [
        {"loss": "attention_kl", "weight": 1.0, "layers": "auto"},
        {"loss": "hidden_cosine", "weight": 0.5},
    ]
    recipe = _recipe(tmp_path, tiny_teacher_dir, corpus_file, loss)
    code, _, err = run_cli("run", recipe, capsys=capsys)
    assert code == 0, err
    rows = (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
    student = [json.loads(r) for r in rows if '"student"' in r]
    assert all(r["attention_kl"] >= 0 and r["hidden_cosine"] >= 0 for r in student)


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (
            {"loss": "hidden_mse", "layers": {5: 3}},
            "layer map 5→3 is impossible: the student has hidden states 0..2 (2 blocks)",
        ),
        (
            {"loss": "hidden_mse", "layers": {1: 9}},
            "layer map 1→9 is impossible: the teacher has hidden states 0..4 (4 blocks)",
        ),
        (
            {"loss": "attention_kl", "layers": {2: 3}},
            "the student has attention blocks 0..1",
        ),
    ],
)
def test_impossible_layer_maps_are_refused_before_teaching(
    tmp_path, tiny_teacher_dir, corpus_file, capsys, loss, message
):
    recipe = _recipe(tmp_path, tiny_teacher_dir, corpus_file, [loss])
    code, _out, err = run_cli("run", recipe, capsys=capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert message in line
    assert not (tmp_path / "runs" / "tiny" / "stages" / "budget.json").exists()
    assert not (tmp_path / "runs" / "tiny" / "student").exists()


def test_head_counts_that_cannot_be_grouped_are_one_line():
    teacher = make_llama(50, layers=2)  # 4 heads
    student = build_student(
        StudentConfig(fresh={"hidden_size": 24, "num_layers": 1, "num_heads": 3}), teacher, None
    )[0]
    terms = [LossTerm("attention_kl", layers=((0, 1),))]
    with pytest.raises(PotstillError, match="student's 3 and the teacher's 4 cannot be grouped"):
        resolve_inside(terms, student, teacher)
    resolved, _ = prepare_inside([LossTerm("attention_kl", heads="mean")], student, teacher)
    assert resolved[0].layers == ((0, 1),)
    assert student.config._attn_implementation == "eager"


def test_a_cached_teacher_keeps_hidden_states_but_not_attention_maps(
    tmp_path, tiny_teacher_dir, corpus_file, capsys
):
    from potstill.config import load_recipe

    recipe = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file)
    recipe["loss"] = [*KD, {"loss": "attention_kl"}]
    with pytest.raises(PotstillError, match=r"attention maps, which the teacher cache"):
        load_recipe(recipe)
    recipe["loss"] = [*KD, {"loss": "hidden_mse", "layers": {1: 3}}]
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = run_cli("run", str(path), capsys=capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "tiny"
    manifest = json.loads((run / "cache" / "manifest.json").read_text())
    assert manifest["fields"]["hidden"]["layers"] == [3]
    assert all(s["fields"]["hidden"]["file"].startswith("hidden-") for s in manifest["shards"])
    assert "hidden states of layers [3]" in err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["hidden_mse"] > 0 for r in rows if r["model"] == "student")
    # Another map needs other layers: the cache is taught again, not misread.
    other = "loss=[{loss: forward_kl, weight: 0.5}, {loss: hidden_mse, layers: {1: 2}}]"
    code, _, err = run_cli("run", str(path), "--resume", other, capsys=capsys)
    assert code == 0, err
    manifest = json.loads((run / "cache" / "manifest.json").read_text())
    assert manifest["fields"]["hidden"]["layers"] == [2]


def test_a_curriculum_run_visits_easy_blocks_first(tmp_path, tiny_teacher_dir, corpus_file, capsys):
    from potstill.config import load_recipe

    recipe = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file, steps=4)
    with pytest.raises(PotstillError, match="read from the teacher cache"):
        load_recipe({**recipe, "teach": {"enabled": False}, "train": {"curriculum": "easy_first"}})
    path = tmp_path / "curriculum.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = run_cli("run", str(path), "train.curriculum=easy_first", capsys=capsys)
    assert code == 0, err
    rows = [
        json.loads(line)
        for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
    ]
    student = [r["forward_kl"] for r in rows if r["model"] == "student"]
    assert len(student) == 4


def test_multi_stage_links_the_assistants_report(tmp_path, tiny_teacher_dir, corpus_file, capsys):
    """teacher → assistant → student: the second stage's teacher is the first's student,
    and its report links the first's."""
    first = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file, steps=2)
    first.update(name="assistant", student={"from_teacher": {"layers": [0, 1, 3]}})
    second = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file, steps=2)
    assistant = tmp_path / "runs" / "assistant" / "student"
    second.update(
        name="student", teacher=str(assistant), student={"from_teacher": {"layers": [0, 2]}}
    )
    for recipe in (first, second):
        path = tmp_path / f"{recipe['name']}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        code, _, err = run_cli("run", str(path), capsys=capsys)
        assert code == 0, err
    report = json.loads((tmp_path / "runs" / "student" / "report.json").read_text())
    assert report["recipe"]["teacher_run"] == {
        "name": "assistant",
        "report": "../assistant/report.html",
    }
    assert report["models"]["teacher"]["params"] > report["models"]["student"]["params"]
    assert (
        "teacher_run"
        not in json.loads((tmp_path / "runs" / "assistant" / "report.json").read_text())["recipe"]
    )
