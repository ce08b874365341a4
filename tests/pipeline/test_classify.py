"""`potstill run` with `task: classify` end to end on tiny models: the teacher labels the
texts, a student per adapter and a hard-label baseline train, every model is scored on the
labelled test set beside the constant commonest label, and the report holds accuracy,
macro-F1 and speed. A resume redoes only the steps whose own inputs changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from potstill.config import load_recipe
from potstill.evaluation.report import Report, summary_table
from potstill.evaluation.report.format import metrics_table
from potstill.pipeline.label import label_spec, read_train_texts
from potstill.synth.prompt import build_prompt
from potstill.synth.store import read_labels
from tests.conftest import count_label_scoring, run_cli
from tests.models.test_encoders import WORDS, make_bert_folder
from tests.test_cli_label import chat_teacher_dir  # noqa: F401 (a fixture)

LABELS = ["sleep", "death"]


def _recipe(
    tmp_path: Path, teacher: Path, student: Path, test_rows: list[dict], extra: str = ""
) -> Path:
    train = tmp_path / "train.jsonl"
    words = [w for w in WORDS if w.isalpha()] or ["x"]
    train.write_text(
        "".join(
            json.dumps({"text": " ".join(words[i : i + 3]), "gold": LABELS[i % 2]}) + "\n"
            for i in range(8)
        )
    )
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    path = tmp_path / "classify.yaml"
    path.write_text(
        f"""
name: tiny-classify
runs_dir: {tmp_path / "runs"}
teacher: {teacher}
device: cpu
student: {{model: {student}, adapters: [full, lora]}}
task:
  kind: classify
  labels: [{{name: sleep, description: about sleeping}}, death]
  train: {train}
  test: {test}
  label_field: label
  batch_size: 4
{extra}loss:
  - {{loss: forward_kl, weight: 0.7, temperature: 2.0}}
  - {{loss: cross_entropy, weight: 0.3}}
train: {{steps: 3, batch_size: 4, warmup: 1, threads: 1}}
"""
    )
    return path


def test_classify_run_trains_every_adapter_and_scores_them(
    tmp_path,
    capsys,
    chat_teacher_dir,  # noqa: F811
):
    student = make_bert_folder(tmp_path / "bert")
    rows = [{"text": "to sleep", "label": "sleep"}, {"text": "to die", "label": "death"}] * 3
    code, out, err = run_cli(
        "run", str(_recipe(tmp_path, chat_teacher_dir, student, rows)), capsys=capsys
    )
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny-classify"
    report = Report.load(run_dir / "report.json")
    assert set(report.models) == {
        "teacher",
        "student-full",
        "student-lora",
        "baseline",
        "majority",
    }
    for name, entry in report.models.items():
        assert 0.0 <= entry.accuracy <= 1.0 and 0.0 <= entry.f1 <= 1.0, name
        if name != "majority":  # a constant answer: no size, speed or confidence
            assert entry.ece is not None and entry.params > 0
    assert (
        report.models["student-lora"].trainable_params
        < report.models["student-full"].trainable_params
    )
    assert report.models["student-full"].examples_per_second["1"] > 0
    assert (run_dir / "labels.parquet").is_file() and (run_dir / "student-lora").is_dir()
    assert "accuracy" in summary_table(report) and "student-lora" in out
    assert report.recipe["labels"] == LABELS
    teacher = report.models["teacher"]
    assert set(teacher.examples_per_second) == {"1", "4"} and teacher.size_bytes > 0
    for name, entry in report.models.items():
        assert len(entry.per_class_f1) == 2
        if name != "majority":
            assert sum(map(sum, entry.confusion)) == len(rows)
    even = report.break_even
    assert even.student in {"student-full", "student-lora"}
    assert even.distill_seconds > report.models[even.student].train_seconds
    assert even.teacher_seconds_per_1k == pytest.approx(1000 / teacher.examples_per_second["1"])
    assert {p.name for p in (run_dir / "plots").iterdir()} >= {
        "confusion.png",
        "quality_vs_size.png",
        "quality_vs_speed.png",
    }
    markdown = (run_dir / "report.md").read_text()
    assert "**best student:" in markdown and "## Break-even" in markdown
    # The floor: always 'sleep' (tied with 'death' in the test labels, the first wins).
    majority = report.models["majority"]
    assert majority.accuracy == 0.5 and majority.f1 == pytest.approx((2 / 3 + 0) / 2)
    assert majority.params is None and majority.examples_per_second is None
    assert report.recipe["majority"] == {"label": "sleep", "from": "test labels"}
    _header, table_rows = metrics_table(report)
    assert "majority ('sleep', test labels)" in [row[0] for row in table_rows]

    # A rerun with --resume trains nothing again and scores the same models the same way.
    code, _out, err = run_cli(
        "run",
        str(tmp_path / "classify.yaml"),
        "--resume",
        capsys=capsys,
    )
    assert code == 0, err
    for name in ("student-full", "student-lora", "baseline"):
        assert f"{name}: already trained, skipping" in err
    again = Report.load(run_dir / "report.json")
    for name, entry in report.models.items():
        assert again.models[name].accuracy == entry.accuracy, name
        assert again.models[name].train_seconds == entry.train_seconds, name


def test_gold_train_labels_add_a_reference_and_can_be_the_hard_labels(
    tmp_path,
    capsys,
    chat_teacher_dir,  # noqa: F811
):
    student = make_bert_folder(tmp_path / "bert")
    rows = [{"text": "to sleep", "label": "sleep"}, {"text": "to die", "label": "death"}]
    extra = "  train_label_field: gold\n  hard_labels: gold\n  shots: 2\n"
    recipe = _recipe(tmp_path, chat_teacher_dir, student, rows, extra)
    code, _out, err = run_cli("run", str(recipe), "student.adapters=[full]", capsys=capsys)
    assert code == 0, err
    report = Report.load(tmp_path / "runs" / "tiny-classify" / "report.json")
    assert set(report.models) == {"teacher", "student-full", "baseline", "gold", "majority"}
    assert report.recipe["hard_labels"] == "gold" and report.recipe["shots"] == 2
    # The floor comes from the train gold labels (4 and 4: the first label wins).
    assert report.recipe["majority"] == {"label": "sleep", "from": "train gold labels"}
    assert report.models["majority"].accuracy == 0.5


def test_shots_put_labelled_train_texts_in_the_prompt(tmp_path, chat_teacher_dir):  # noqa: F811
    from transformers import AutoTokenizer

    rows = [{"text": "to sleep", "label": "sleep"}, {"text": "to die", "label": "death"}]
    extra = "  train_label_field: gold\n  shots: 3\n"
    path = _recipe(tmp_path, chat_teacher_dir, tmp_path / "bert", rows, extra)
    recipe = load_recipe(path)
    train = read_train_texts(recipe)
    spec = label_spec(recipe, train)
    assert len(spec.examples) == 3 and {e.label for e in spec.examples} == set(LABELS)
    for example in spec.examples:  # train texts with their gold labels, never test texts
        assert train.labels[train.texts.index(example.text)] == example.label
        assert example.text not in {r["text"] for r in rows}
    assert label_spec(recipe, train).examples == spec.examples  # deterministic
    seeds = {
        tuple(label_spec(load_recipe(path, [f"train.seed={seed}"]), train).examples)
        for seed in range(6)
    }
    assert len(seeds) > 1  # train.seed chooses them
    tokenizer = AutoTokenizer.from_pretrained(chat_teacher_dir)
    prefix = tokenizer.decode(build_prompt(tokenizer, spec).prefix_ids)
    for example in spec.examples:
        assert f"text: {example.text.lower()}" in prefix


def test_a_resume_redoes_only_the_steps_whose_inputs_changed(
    tmp_path,
    capsys,
    monkeypatch,
    chat_teacher_dir,  # noqa: F811
):
    student = make_bert_folder(tmp_path / "bert")
    rows = [{"text": "to sleep", "label": "sleep"}, {"text": "to die", "label": "death"}]
    extra = "  train_label_field: gold\n"
    recipe = str(_recipe(tmp_path, chat_teacher_dir, student, rows, extra))
    run_dir = tmp_path / "runs" / "tiny-classify"
    calls = count_label_scoring(monkeypatch)
    fast = ["student.adapters=[full]", "eval.baseline=false"]

    def run(*overrides: str, resume: bool = True) -> str:
        calls.clear()
        flags = ["--resume"] if resume else []
        code, _out, err = run_cli("run", recipe, *flags, *fast, *overrides, capsys=capsys)
        assert code == 0, err
        return err

    run(resume=False)
    assert sum(calls) >= 8 + len(rows)  # the train texts and the test texts
    before = read_labels(run_dir / "labels.parquet")

    # A new calibration: the kept raw scores calibrated again, no teacher call at all.
    err = run("task.calibrate=prior")
    assert calls == [], err
    after = read_labels(run_dir / "labels.parquet")
    assert after.calibration.mode == "prior" and before.calibration.mode == "none"
    assert after.calibration.target_from == "train gold labels"
    np.testing.assert_array_equal(after.logprobs, before.logprobs)
    assert not np.allclose(after.probs, before.probs)
    assert "student-full: already trained" not in err  # its soft labels changed
    assert "gold: already trained, skipping" in err  # the gold labels did not
    report = Report.load(run_dir / "report.json")
    assert report.recipe["calibrate"] == "prior"

    # A new learning rate: the students train again, the teacher scores nothing.
    err = run("task.calibrate=prior", "train.lr=0.0005")
    assert calls == [], err
    assert "student-full: already trained" not in err
    assert "its scores on the 2 test texts were kept" in err

    # A new label description: the teacher labels and scores everything again.
    labels = "task.labels=[{name: sleep, description: about slumber}, death]"
    err = run("task.calibrate=prior", "train.lr=0.0005", labels)
    assert sum(calls) >= 8 + len(rows), err
    assert "labelling every text again" in err
    assert "student-full: already trained" not in err
    assert read_labels(run_dir / "labels.parquet").fingerprint != after.fingerprint


def test_a_teacher_without_a_chat_template_runs_with_a_plain_prompt(
    tmp_path, capsys, tiny_teacher_dir
):
    student = make_bert_folder(tmp_path / "bert")
    rows = [{"text": "to sleep", "label": "sleep"}, {"text": "to die", "label": "death"}]
    recipe = _recipe(tmp_path, tiny_teacher_dir, student, rows)
    code, _out, err = run_cli("run", str(recipe), "student.adapters=[lora]", capsys=capsys)
    assert code == 0, err
    assert "no chat template: using a plain" in err
    report = Report.load(tmp_path / "runs" / "tiny-classify" / "report.json")
    assert report.models["student-lora"].accuracy is not None


def test_a_test_label_outside_the_label_set_is_one_line(tmp_path, capsys, chat_teacher_dir):  # noqa: F811
    student = make_bert_folder(tmp_path / "bert")
    rows = [{"text": "to sleep", "label": "sleep"}, {"text": "to die", "label": "dying"}]
    code, _out, err = run_cli(
        "run", str(_recipe(tmp_path, chat_teacher_dir, student, rows)), capsys=capsys
    )
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: task.test")
    assert "'dying' is not one of task.labels" in err
    assert not (tmp_path / "runs" / "tiny-classify").exists()


@pytest.mark.parametrize(
    ("extra", "rows", "expected"),
    [
        ("", [{"text": "to sleep", "kind": "sleep"}], "no 'label' label field"),
        ("  train_label_field: nope\n", [{"text": "a", "label": "sleep"}], "no 'nope' label"),
        ("  hard_labels: gold\n", [{"text": "a", "label": "sleep"}], "train_label_field is not"),
    ],
    ids=["test-without-label-field", "train-without-label-field", "gold-without-field"],
)
def test_bad_label_fields_are_one_line_and_write_nothing(
    tmp_path,
    capsys,
    chat_teacher_dir,  # noqa: F811
    extra,
    rows,
    expected,
):
    student = make_bert_folder(tmp_path / "bert")
    code, _out, err = run_cli(
        "run", str(_recipe(tmp_path, chat_teacher_dir, student, rows, extra)), capsys=capsys
    )
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert expected in line and err.strip().splitlines()[-1] == line
    assert not (tmp_path / "runs" / "tiny-classify").exists()


@pytest.mark.parametrize("missing", ["test", "label_field"])
def test_classify_needs_a_labelled_test_set(tmp_path, capsys, chat_teacher_dir, missing):  # noqa: F811
    student = make_bert_folder(tmp_path / "bert")
    path = _recipe(tmp_path, chat_teacher_dir, student, [{"text": "a", "label": "sleep"}])
    lines = [
        line for line in path.read_text().splitlines() if not line.strip().startswith(f"{missing}:")
    ]
    path.write_text("\n".join(lines) + "\n")
    code, _out, err = run_cli("run", str(path), capsys=capsys)
    assert code == 2 and "needs a labelled test set" in err


@pytest.mark.parametrize(("steps", "minutes", "kept"), [(50, 0.03, 20), (6, 60.0, 6)])
def test_a_budget_fits_every_students_steps_once_the_labels_are_made(
    tmp_path,
    capsys,
    chat_teacher_dir,  # noqa: F811
    steps,
    minutes,
    kept,
):
    """budget_minutes in a classify run: the labelling is measured as it ran, three
    throwaway steps time a student, and every student trains the same fitted steps; under
    half the recipe's, the headline says the result is not comparable and how to rerun."""
    student = make_bert_folder(tmp_path / "bert")
    rows = [{"text": "to sleep", "label": "sleep"}, {"text": "to die", "label": "death"}] * 2
    path = _recipe(tmp_path, chat_teacher_dir, student, rows)
    text = path.read_text().replace("steps: 3,", f"steps: {steps},")
    path.write_text(text + f"budget_minutes: {minutes}\n")
    code, out, err = run_cli("run", str(path), capsys=capsys)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny-classify"
    decision = json.loads((run_dir / "stages" / "budget.json").read_text())
    assert (decision["requested_steps"], decision["steps"]) == (steps, kept)
    assert decision["measured"]["models"] == 3  # full, lora, baseline
    assert decision["measured"]["student_step_seconds"] > 0
    for name in ("student-full", "student-lora", "baseline"):
        marker = json.loads((run_dir / "stages" / f"{name}.json").read_text())
        assert marker["steps"] == kept, name
    assert not (run_dir / "checkpoints" / ".step-probe").exists()
    first = (run_dir / "report.md").read_text().split("\n- **")[1]
    report = Report.load(run_dir / "report.json")
    if kept < steps / 2:
        assert first.startswith(f"time budget: {kept} of {steps} steps.**")
        assert "not comparable" in first and "budget_minutes=null" in first
        assert f"time budget: {kept} of {steps} steps; rerun with budget_minutes=null" in out
    else:
        assert not first.startswith("time budget")  # all kept: the budget comes last
        assert summary_table(report).splitlines()[-1] == f"time budget: all {steps} steps"
    # resumed, the decision is kept: nothing is timed or trained again
    code, _out, err = run_cli("run", str(path), "--resume", capsys=capsys)
    assert code == 0, err
    assert "step-probe" not in err and err.count("already trained, skipping") == 3
