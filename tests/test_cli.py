"""The real CLI, end to end, on tiny models built in-process (fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import llama_folder, make_tokenizer, run_cli

VERBS = ["run", "teach", "distill", "label", "eval", "models", "pull"]


potstill = run_cli


@pytest.fixture
def recipe(tmp_path, tiny_teacher_dir, corpus_file) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"""
name: tiny
runs_dir: {tmp_path / "runs"}
teacher: {tiny_teacher_dir}
student: {{from_teacher: {{layers: [0, 3]}}}}
data: {{path: {corpus_file}, block_size: 16, heldout: 0.1}}
loss:
  - {{loss: forward_kl, weight: 0.5, temperature: 2.0}}
  - {{loss: cross_entropy, weight: 0.5}}
train: {{steps: 3, batch_size: 2, warmup: 1, lr: 1.0e-3, checkpoint_every: 2}}
eval: {{batch_size: 4, generate_tokens: 4}}
"""
    )
    return path


def test_every_verb_has_help(capsys):
    for verb in VERBS:
        code, out, _ = potstill(verb, "--help", capsys=capsys)
        assert code == 0, verb
        assert "Usage" in out


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "potstill"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert all(verb in result.stdout for verb in VERBS)


def test_run_end_to_end(recipe, tmp_path, capsys, corpus_file):
    code, out, err = potstill("run", str(recipe), capsys=capsys)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny"
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    for name, entry in report["models"].items():
        assert entry["params"] > 0 and entry["size_bytes"] > 0, name
        assert entry["perplexity"] > 1 and entry["tokens_per_second"] > 0, name
    for name in ("student", "baseline"):
        assert 0 <= report["models"][name]["agreement"]["top1"] <= 1
        assert report["models"][name]["agreement"]["kl"] >= 0
    assert report["models"]["student"]["params"] < report["models"]["teacher"]["params"]
    assert report["recipe"]["loss"][0] == {"loss": "forward_kl", "weight": 0.5, "temperature": 2.0}
    assert report["data"]["train_tokens"] > 0
    for f in [
        "config.yaml",
        "report.md",
        "report.html",
        "student/config.json",
        "baseline/model.safetensors",
    ]:
        assert (run_dir / f).is_file(), f
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["model"] == "student"] == [1, 2, 3]
    assert [r["step"] for r in rows if r["model"] == "baseline"] == [1, 2, 3]
    assert "teacher" in out and "student" in out and "baseline" in out
    assert "report.html" in out

    # A second run refuses to overwrite; --resume finishes instantly from what is there.
    before = (run_dir / "report.json").stat().st_mtime_ns
    code, out, err = potstill("run", str(recipe), capsys=capsys)
    assert code == 2 and err.startswith("error:") and "--resume" in err
    assert len(err.strip().splitlines()) == 1
    assert (run_dir / "report.json").stat().st_mtime_ns == before
    code, out, err = potstill("run", str(recipe), "--resume", capsys=capsys)
    assert code == 0 and "already trained" in err

    # eval scores any models against the teacher on any data.
    student = str(run_dir / "student")
    code, out, err = potstill(
        "eval",
        "--model",
        student,
        "--teacher",
        student,
        "--data",
        str(corpus_file),
        "--out",
        str(tmp_path / "ev"),
        "--block-size",
        "16",
        "--heldout",
        "0.1",
        capsys=capsys,
    )
    assert code == 0, err
    ev = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert ev["models"]["model"]["agreement"]["top1"] == pytest.approx(1.0)
    assert ev["models"]["model"]["perplexity"] == pytest.approx(
        report["models"]["student"]["perplexity"], rel=1e-4
    )


@pytest.mark.parametrize("adapter", ["lora", "pissa"])
def test_adapter_students_run(recipe, tmp_path, capsys, adapter):
    code, _, err = potstill(
        "run",
        str(recipe),
        f"student.adapter={adapter}",
        "student.lora.r=4",
        "eval.baseline=false",
        capsys=capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "runs" / "tiny" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student"}


def test_distill_resumes_after_interruption(recipe, tmp_path, capsys, monkeypatch):
    import torch

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    code, _, err = potstill("distill", str(recipe), capsys=capsys)
    assert code == 130 and "--resume" in err
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    code, _out, err = potstill("distill", str(recipe), "--resume", capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "runs" / "tiny" / "student" / "model.safetensors").is_file()
    rows = (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3]


def test_teach_then_distill_trains_from_the_cache(recipe, tmp_path, capsys, monkeypatch):
    code, out, err = potstill("teach", str(recipe), capsys=capsys)
    assert code == 0, err
    cache = tmp_path / "runs" / "tiny" / "cache"
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and f"{manifest['tokens']:,} tokens" in out

    # distill reads the cache: the teacher never runs forward while the student trains
    from potstill.teachers import LiveTeacher

    def no_live_teacher(*args, **kwargs):
        raise AssertionError("the live teacher ran")

    monkeypatch.setattr(LiveTeacher, "outputs", no_live_teacher)
    code, _out, err = potstill("distill", str(recipe), capsys=capsys)
    assert code == 0, err
    assert "teacher cache" in err
    assert (tmp_path / "runs" / "tiny" / "student" / "model.safetensors").is_file()


def test_a_corrupt_cache_is_one_line_exit_2(recipe, tmp_path, capsys):
    code, _out, err = potstill("teach", str(recipe), capsys=capsys)
    assert code == 0, err
    shard = tmp_path / "runs" / "tiny" / "cache" / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    code, _out, err = potstill("distill", str(recipe), capsys=capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: teacher cache shard")
    assert "truncated" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "tiny" / "student").exists()
    code, _out, err = potstill("teach", str(recipe), capsys=capsys)  # repairs it
    assert code == 0, err
    code, _out, err = potstill("distill", str(recipe), capsys=capsys)
    assert code == 0, err


def test_run_through_the_cache_or_live(recipe, tmp_path, capsys):
    code, _out, err = potstill("run", str(recipe), capsys=capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "runs" / "tiny" / "report.json").read_text())
    signal = report["recipe"]["teacher_signal"]
    assert signal["from"] == "cache" and signal["samples"] == 192 and signal["bytes_per_token"] > 0
    live = ("name=live", "teach.enabled=false")
    code, _out, err = potstill("run", str(recipe), *live, capsys=capsys)
    assert code == 0, err
    assert not (tmp_path / "runs" / "live" / "cache").exists()
    report = json.loads((tmp_path / "runs" / "live" / "report.json").read_text())
    assert report["recipe"]["teacher_signal"] == {"from": "live teacher"}


def _bad_jsonl(tmp_path: Path) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    return f"data.path={path}"


def _empty(tmp_path: Path) -> str:
    path = tmp_path / "empty.txt"
    path.write_text("")
    return f"data.path={path}"


def _other_vocab(tmp_path: Path) -> str:
    folder = llama_folder(tmp_path / "other", make_tokenizer(vocab_size=280), layers=1)
    return f"student={{model: {folder}}}"


@pytest.mark.parametrize(
    ("make_override", "expected"),
    [
        (lambda p: "teacher=/no/such/teacher", "not found"),
        (lambda p: "teacher=bundled:smollm3", "no bundled model named"),
        (lambda p: "train.stesp=3", "did you mean train.steps"),
        (lambda p: "train.steps=three", "train.steps"),
        (_bad_jsonl, "bad.jsonl:2"),
        (_empty, "empty.txt"),
        (_other_vocab, "has another tokenizer than the teacher"),
    ],
)
def test_user_errors_are_one_line_exit_2_and_touch_nothing(
    recipe, tmp_path, capsys, make_override, expected
):
    code, _out, err = potstill("run", str(recipe), make_override(tmp_path), capsys=capsys)
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert expected in line
    assert err.strip().splitlines()[-1] == line and "Traceback" not in err
    assert not (tmp_path / "runs" / "tiny" / "report.json").exists()


def test_run_through_a_sampled_cache(recipe, tmp_path, capsys):
    sampled = ("teach.top_k=0", "teach.samples=16")
    code, out, err = potstill("teach", str(recipe), *sampled, capsys=capsys)
    assert code == 0, err
    assert "16 draws at T=" in out and "an unbiased estimate" in out
    code, _out, err = potstill("run", str(recipe), *sampled, "--resume", capsys=capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "runs" / "tiny" / "report.json").read_text())
    signal = report["recipe"]["teacher_signal"]
    assert signal["from"] == "cache" and (signal["top_k"], signal["samples"]) == (0, 16)
    assert signal["reconstruction_kl_mean"] is None
    assert "16 draws" in err  # the run's log line about the cache it trained from
