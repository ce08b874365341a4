"""Quantization through the command line: `potstill quantize` after training, and
quantization-aware distillation (``student.qat``) through a whole run."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from potstill.models.load import load_causal_lm
from potstill.models.quantize import is_quantized
from tests.conftest import run_cli, tiny_recipe


def _recipe(tmp_path, teacher_dir, corpus, **student) -> str:
    recipe = tiny_recipe(tmp_path / "runs", teacher_dir, corpus, steps=3)
    recipe["student"] = {"from_teacher": {"layers": [0, 3]}, **student}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _error(err: str) -> str:
    """The one error line a refused command prints (progress lines may precede it)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _module_types(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules()}


def test_qat_trains_fake_quantized_and_saves_the_integers(
    tmp_path, tiny_teacher_dir, corpus_file, capsys, monkeypatch
):
    qat = {"weights": "int4", "group_size": 16}
    recipe = _recipe(tmp_path, tiny_teacher_dir, corpus_file, qat=qat)
    import potstill.pipeline.student_stage as stage

    seen: dict[str, set[str]] = {}
    real_train = stage.train

    def spy(model, *args, name, **kwargs):
        seen[name] = _module_types(model)
        return real_train(model, *args, name=name, **kwargs)

    monkeypatch.setattr(stage, "train", spy)
    code, _, err = run_cli("run", recipe, capsys=capsys)
    assert code == 0, err
    # Both the student and its baseline train through fake quantization ...
    for name in ("student", "baseline"):
        assert {"FakeQuantizedLinear", "FakeQuantizedEmbedding"} <= seen[name]
    run = tmp_path / "runs" / "tiny"
    # ... and are saved as the integers they trained towards, which load like any model.
    for name in ("student", "baseline"):
        assert is_quantized(run / name)
        model, _ = load_causal_lm(str(run / name))
        assert not any(t.startswith("FakeQuantized") for t in _module_types(model))
        weight = model.model.layers[0].mlp.up_proj.weight
        assert type(weight).__name__ == "IntxUnpackedToInt8Tensor"
    report = json.loads((run / "report.json").read_text())
    assert report["recipe"]["student"]["qat"]["weights"] == "int4"
    assert torch.isfinite(torch.tensor(report["models"]["student"]["perplexity"]))
    fp32 = sum(p.stat().st_size for p in tiny_teacher_dir.glob("*.safetensors"))
    assert report["models"]["student"]["size_bytes"] < fp32 / 2  # 2 of 4 layers, in int4


def test_a_group_size_the_student_cannot_take_is_refused_before_teaching(
    tmp_path, tiny_teacher_dir, corpus_file, capsys
):
    recipe = _recipe(tmp_path, tiny_teacher_dir, corpus_file, qat={"group_size": 24})
    code, _, err = run_cli("run", recipe, capsys=capsys)
    assert code == 2
    assert "group_size 24 does not divide" in _error(err)
    assert not (tmp_path / "runs" / "tiny" / "cache").exists()


def test_qat_with_adapters_is_refused_in_one_line(tmp_path, tiny_teacher_dir, corpus_file, capsys):
    recipe = _recipe(tmp_path, tiny_teacher_dir, corpus_file, qat={}, adapter="lora")
    code, _, err = run_cli("run", recipe, capsys=capsys)
    assert code == 2
    assert "student.qat trains a full student" in _error(err)


def test_quantize_writes_a_folder_that_loads_and_evaluates(
    tmp_path, tiny_teacher_dir, corpus_file, capsys
):
    out = tmp_path / "int8"
    code, stdout, err = run_cli(
        "quantize", str(tiny_teacher_dir), "--out", str(out), "--weights", "int8", capsys=capsys
    )
    assert code == 0, err
    assert "quantized:" in stdout and is_quantized(out)
    float_model, _ = load_causal_lm(str(tiny_teacher_dir))
    model, _ = load_causal_lm(str(out))
    ids = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        error = (model(ids).logits - float_model(ids).logits).abs().max()
    assert 0 < error < 0.05  # int8 per channel on the tiny model: close, not equal
    code, stdout, err = run_cli(
        "eval", "--model", str(out), "--data", str(corpus_file), "--out", str(tmp_path / "ev"),
        "--block-size", "16", "--teacher", str(tiny_teacher_dir), capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["models"]["model"]["perplexity"] > 1


def test_quantize_refuses_and_overwrites_nothing(tmp_path, tiny_teacher_dir, corpus_file, capsys):
    out = tmp_path / "int4"
    assert run_cli("quantize", str(tiny_teacher_dir), "--out", str(out), capsys=capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    teacher = str(tiny_teacher_dir)
    cases = [
        (["quantize", teacher, "--out", str(out)], "already exists"),
        (["quantize", str(out), "--out", str(tmp_path / "again")], "already quantized"),
        (["quantize", teacher, "--out", str(tmp_path / "g"), "--group-size", "24"], "divide"),
        (["quantize", teacher, "--out", str(tmp_path / "w"), "--weights", "int2"], "int2"),
    ]
    for args, message in cases:
        code, _, err = run_cli(*args, capsys=capsys)
        assert code == 2 and message in _error(err), (args, err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "again").exists() and not (tmp_path / "g").exists()


@pytest.mark.parametrize("verb", ["run", "distill"])
def test_a_quantized_student_is_refused(tmp_path, tiny_teacher_dir, corpus_file, capsys, verb):
    out = tmp_path / "q"
    assert run_cli("quantize", str(tiny_teacher_dir), "--out", str(out), capsys=capsys)[0] == 0
    recipe = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file)
    recipe["student"] = {"model": str(out)}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = run_cli(verb, str(path), capsys=capsys)
    assert code == 2
    assert "is a quantized model (int4 weights" in _error(err)
    assert not (tmp_path / "runs" / "tiny" / "student").exists()


def test_eval_quantize_adds_a_report_row_per_quantization(
    tmp_path, tiny_teacher_dir, corpus_file, capsys
):
    recipe = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file, steps=2)
    recipe["eval"]["quantize"] = ["int8", {"weights": "int4", "group_size": 16}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = run_cli("run", str(path), capsys=capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "tiny"
    report = json.loads((run / "report.json").read_text())
    models = report["models"]
    assert {"student", "student-int8", "student-int4-g16"} <= set(models)
    student = models["student"]
    for name in ("student-int8", "student-int4-g16"):
        assert is_quantized(run / name)
        assert models[name]["size_bytes"] < student["size_bytes"]
        assert models[name]["train_seconds"] == student["train_seconds"]
        assert models[name]["perplexity"] != student["perplexity"]
    assert models["student-int4-g16"]["size_bytes"] < models["student-int8"]["size_bytes"]
    assert "student-int8" in (run / "report.md").read_text()
    # A resumed run finds them done: nothing is quantized again.
    stamp = (run / "student-int8" / "model.safetensors").stat().st_mtime_ns
    code, _, err = run_cli("run", str(path), "--resume", capsys=capsys)
    assert code == 0, err
    assert (run / "student-int8" / "model.safetensors").stat().st_mtime_ns == stamp


def test_qat_under_fsdp_is_refused(tmp_path, tiny_teacher_dir, corpus_file, capsys):
    recipe = _recipe(tmp_path, tiny_teacher_dir, corpus_file, qat={"weights": "int4"})
    code, _, err = run_cli("distill", recipe, "train.parallel=fsdp", capsys=capsys)
    assert code == 2 and "which FSDP does not shard" in _error(err)


def test_eval_quantize_with_qat_is_refused(tmp_path, tiny_teacher_dir, corpus_file, capsys):
    recipe = _recipe(tmp_path, tiny_teacher_dir, corpus_file, qat={"weights": "int4"})
    code, _, err = run_cli("run", recipe, "eval.quantize=[int8]", capsys=capsys)
    assert code == 2 and "student.qat already trains it quantized" in _error(err)


def test_learned_scales_in_eval_quantize_are_refused(
    tmp_path, tiny_teacher_dir, corpus_file, capsys
):
    recipe = _recipe(tmp_path, tiny_teacher_dir, corpus_file)
    quantize = "eval.quantize=[{weights: int4, learn_scales: true}]"
    code, _, err = run_cli("run", recipe, quantize, capsys=capsys)
    assert code == 2 and "learn_scales trains the scales" in _error(err)
