"""Chain-of-thought distillation end to end on loopback: a scripted OpenAI-compatible
teacher that works chain sums out step by step (right on some problems, one off on the
others), a tiny local student with its own chat template; the traces are checked, only
the right ones kept, two students trained (traces / answers alone) and everyone tested
by exact match. A rerun reuses everything; a KD term the setup cannot give is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from potstill.evaluation.report import Report
from tests.conftest import make_tokenizer, run_cli
from tests.pipeline.test_generate import chat_teacher  # noqa: F401 (a fixture)
from tests.serve.conftest import make_decisive_llama
from tests.synth.test_label import CHAT_TEMPLATE
from tests.teachers.scripted import Script, scripted

KEY_ENV = "POTSTILL_TEST_REASON_KEY"
SUMS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}


def work_it_out(body: dict) -> str:
    """Step-by-step sums; one off at the end when the first number is odd."""
    question = body["messages"][-1]["content"]
    terms = re.findall(r"[-+]|\d+", question.split(":")[-1])
    total, lines = int(terms[0]), []
    for sign, number in zip(terms[1::2], terms[2::2], strict=True):
        new = total + int(number) if sign == "+" else total - int(number)
        lines.append(f"{total} {sign} {number} = {new}")
        total = new
    if int(terms[0]) % 2:
        total += 1
    return "\n".join(lines) + f"\nThe answer is {total}."


def _recipe(tmp_path: Path, student: Path, **extra) -> Path:
    recipe = {
        "name": "cot",
        "runs_dir": str(tmp_path / "runs"),
        "teacher": "openai:scripted",
        "device": "cpu",
        "task": {"kind": "reason"},
        "reason": {"options": SUMS, "train": 8, "test": 6, "max_tokens": 8, "batch_size": 4},
        "generate": {"n": 2, "max_tokens": 64},
        "student": {"model": str(student)},
        "loss": [{"loss": "cross_entropy"}],
        "data": {"block_size": 128},
        "train": {"steps": 2, "batch_size": 2, "warmup": 1, "threads": 1},
        **extra,
    }
    path = tmp_path / "cot.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(recipe: Path, url: str, capsys, *more: str) -> tuple[int, str, str]:
    return run_cli(
        "run",
        str(recipe),
        f"teach.endpoint.base_url={url}",
        f"teach.endpoint.api_key_env={KEY_ENV}",
        *more,
        capsys=capsys,
    )


def test_checked_traces_train_the_student_and_everyone_is_tested(
    tmp_path,
    capsys,
    monkeypatch,
    chat_teacher,  # noqa: F811
):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    script = Script(reply=work_it_out)
    recipe = _recipe(tmp_path, chat_teacher)
    with scripted(script) as url:
        code, _out, err = _run(recipe, url, capsys)
        assert code == 0, err
        calls = len(script.arrivals)
        assert calls == 8 * 2 + 6  # every trace, then every test answer, once
        folder = tmp_path / "runs" / "cot"
        traces = [json.loads(x) for x in (folder / "traces.jsonl").read_text().splitlines()]
        problems = [
            json.loads(x) for x in (folder / "problems" / "train.jsonl").read_text().splitlines()
        ]
        right = {
            p["question"] for p in problems if not int(p["question"].split(":")[-1].split()[0]) % 2
        }
        assert len(traces) == 16
        for trace in traces:
            question = problems[trace["problem"]]["question"]
            assert trace["correct"] == (question in right)
        report = Report.load(folder / "report.json")
        assert list(report.models) == ["teacher", "student", "base", "answers"]
        tests = [
            json.loads(x) for x in (folder / "problems" / "test.jsonl").read_text().splitlines()
        ]
        even = sum(not int(t["question"].split(":")[-1].split()[0]) % 2 for t in tests)
        assert report.models["teacher"].accuracy == even / len(tests)
        stats = report.recipe["traces"]
        assert stats["kept"] == 2 * len(right) and stats["traces"] == 16
        assert report.recipe["train_examples"] == {
            "answers": stats["kept"],
            "student": stats["kept"],
        }
        for name in ("base", "answers", "student"):
            entry = report.models[name]
            assert entry.accuracy is not None and 0 <= entry.accuracy <= 1
            assert entry.mean_answer_tokens is not None and entry.mean_answer_tokens <= 8
            answers = (folder / "answers" / f"{name}.jsonl").read_text().splitlines()
            assert len(answers) == 6
        assert (folder / "student" / "config.json").is_file()
        assert (folder / "answers-student" / "config.json").is_file()
        assert "traces vs answers only" in (folder / "report.md").read_text()

        # A rerun asks the teacher nothing and trains nothing again.
        code, out, err = _run(recipe, url, capsys, "--resume")
        assert code == 0, err
        assert len(script.arrivals) == calls
        assert "student: already trained, skipping" in out + err


def test_a_kd_term_the_teacher_cannot_give_is_one_line(
    tmp_path,
    capsys,
    monkeypatch,
    chat_teacher,  # noqa: F811
):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    kd = [{"loss": "forward_kl", "weight": 0.5}, {"loss": "cross_entropy", "weight": 0.5}]
    recipe = _recipe(tmp_path, chat_teacher, loss=kd)
    with scripted(Script(reply=work_it_out)) as url:
        code, _out, err = _run(recipe, url, capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: loss: forward_kl needs the teacher's logits, which an endpoint teacher does "
        "not give; learn from its traces alone: loss: [{loss: cross_entropy}]"
    ]
    assert not (tmp_path / "runs" / "cot").exists()


def test_a_kd_term_across_tokenizers_is_refused_before_anything_is_written(
    tmp_path,
    capsys,
    chat_teacher,  # noqa: F811
):
    other = tmp_path / "other-student"
    tokenizer = make_tokenizer(vocab_size=280)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(other)
    make_decisive_llama(len(tokenizer)).save_pretrained(other)
    kd = [{"loss": "forward_kl", "weight": 0.5}, {"loss": "cross_entropy", "weight": 0.5}]
    recipe = _recipe(tmp_path, other, loss=kd, teacher=str(chat_teacher))
    code, _out, err = run_cli("run", str(recipe), capsys=capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "the student's tokenizer (280 tokens) is not the teacher's (300)" in line
    assert line.endswith(
        "the student learns from the traces' text alone: loss: [{loss: cross_entropy}]"
    )
    assert not (tmp_path / "runs" / "cot").exists()


def test_a_teacher_whose_traces_never_check_stops_the_run_in_one_line(
    tmp_path,
    capsys,
    monkeypatch,
    chat_teacher,  # noqa: F811
):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    recipe = _recipe(tmp_path, chat_teacher)
    with scripted(Script(reply=lambda body: "I would rather not say.")) as url:
        code, _out, err = _run(recipe, url, capsys)
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "error: none of the teacher's 16 traces checks, so there is nothing to learn from"
        )
    )
    traces = (tmp_path / "runs" / "cot" / "traces.jsonl").read_text().splitlines()
    assert len(traces) == 16 and all(json.loads(t)["answer"] is None for t in traces)


def test_an_on_policy_student_trains_on_its_own_replies_beside_the_off_policy_one(
    tmp_path,
    capsys,
    monkeypatch,
    chat_teacher,  # noqa: F811
):
    # A tiny local teacher (its logits score the student's replies) whose traces are
    # written for it: a random model's arithmetic would never check.
    from potstill.pipeline import reason
    from potstill.synth.traces import check_traces

    def scripted_traces(ctx, problems):
        rows = [
            {
                "prompt": p.question,
                "sample": 0,
                "response": work_it_out({"messages": [{"content": p.question}]}),
                "finish_reason": "stop",
            }
            for p in problems.problems
        ]
        return check_traces(rows, problems, samples=1)

    monkeypatch.setattr(reason, "_traces", scripted_traces)
    kd = [{"loss": "cross_entropy", "weight": 0.5}, {"loss": "forward_kl", "weight": 0.5}]
    recipe = _recipe(
        tmp_path,
        chat_teacher,
        teacher=str(chat_teacher),
        loss=kd,
        reason={
            "options": SUMS,
            "train": 8,
            "test": 4,
            "max_tokens": 8,
            "batch_size": 4,
            "answers": False,
            "on_policy": {"fraction": 0.5, "max_tokens": 16},
        },
        train={"steps": 6, "batch_size": 2, "warmup": 1, "threads": 1},
    )
    code, _out, err = run_cli("run", str(recipe), capsys=capsys)
    assert code == 0, err
    folder = tmp_path / "runs" / "cot"
    report = Report.load(folder / "report.json")
    assert list(report.models) == ["teacher", "student", "base", "on-policy"]
    settings = report.recipe["on_policy"]
    assert settings["fraction"] == 0.5 and settings["temperature"] == 1.0
    assert 1 <= settings["sampled_batches"] <= 7 and settings["sampled_tokens"] >= 1
    assert report.recipe["train_examples"] == {
        "student": report.recipe["traces"]["kept"],
        "on-policy": report.recipe["traces"]["kept"],
    }
    # Both students are the same copy of the student, trained on the same traces: they
    # differ because the on-policy one's sampled batches are its own replies.
    off = (folder / "student" / "model.safetensors").read_bytes()
    on = (folder / "on-policy-student" / "model.safetensors").read_bytes()
    assert off != on
    markdown = (folder / "report.md").read_text()
    assert "on-policy vs off-policy" in markdown and "KL on own replies" in markdown
    # The local teacher shares the students' vocabulary: it scores their own replies
    # (the untrained student is the teacher's own copy here, so it agrees exactly).
    assert abs(report.models["base"].reply_kl) < 1e-6
    for name in ("student", "on-policy"):
        assert report.models[name].reply_kl > 0
    assert report.models["teacher"].reply_kl is None
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} >= {"student", "on-policy"}

    # A loss with nothing to score the student's own replies is refused in one line.
    (tmp_path / "ce").mkdir()
    ce_only = _recipe(
        tmp_path / "ce",
        chat_teacher,
        teacher=str(chat_teacher),
        reason={"options": SUMS, "on_policy": {"fraction": 0.5}},
    )
    code, _out, err = run_cli("run", str(ce_only), capsys=capsys)
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "error: reason.on_policy trains on the student's own replies, which have no reference"
        )
    )
