"""The one train-a-student stage, through each kind of run (language model, classify,
reason, context): a resumed run whose training inputs changed trains its students again
from the start, to the same weights as a fresh run of the edited recipe; a resume with
nothing changed trains nothing; a checkpoint left by other inputs is discarded."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from potstill.config import load_recipe
from potstill.pipeline import run, student_stage
from tests.conftest import tiny_recipe
from tests.models.test_encoders import make_bert_folder
from tests.pipeline.test_classify import _recipe as classify_recipe
from tests.pipeline.test_context_distill import _recipe as context_recipe
from tests.pipeline.test_generate import chat_teacher  # noqa: F401 (a fixture)
from tests.pipeline.test_reason import KEY_ENV, work_it_out
from tests.pipeline.test_reason import _recipe as reason_recipe
from tests.teachers.scripted import Script, scripted
from tests.test_cli_label import chat_teacher_dir  # noqa: F401 (a fixture)

# A runner: (recipe overrides, resume) -> the run folder.
Runner = Callable[[list[str], bool], Path]


@pytest.fixture(autouse=True)
def restore_threads():
    """The recipes set torch's thread count; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def fingerprints(run_dir: Path, names: list[str]) -> dict[str, str]:
    return {
        name: json.loads((run_dir / "stages" / f"{name}.json").read_text())["fingerprint"]
        for name in names
    }


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under ``folder`` (a merged model and its
    adapter alike), keyed by file and tensor name."""
    return {
        f"{path.relative_to(folder)}:{key}": value
        for path in sorted(folder.rglob("*.safetensors"))
        for key, value in load_file(path).items()
    }


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = saved_weights(a), saved_weights(b)
    assert first and first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"{a} and {b} differ in {different}"


def untouched(run_dir: Path, folders: list[str]) -> dict[str, bytes | int]:
    """What training would change: the markers, the metrics, the saved weights."""
    state: dict[str, bytes | int] = {
        str(p.relative_to(run_dir)): p.read_bytes() for p in (run_dir / "stages").iterdir()
    }
    state["metrics"] = (run_dir / "metrics.jsonl").read_bytes()
    for folder in folders:
        for path in (run_dir / folder).rglob("*.safetensors"):
            state[str(path.relative_to(run_dir))] = path.stat().st_mtime_ns
    return state


def check_a_changed_input_retrains_like_a_fresh_run(
    runner: Runner,
    tmp_path: Path,
    change: list[str],
    *,
    students: dict[str, str],
    unchanged: list[str] = (),  # type: ignore[assignment]
) -> None:
    """``students``: stage name -> saved folder of every student ``change`` retrains;
    ``unchanged``: stages it must leave alone."""
    run_dir = runner([], False)
    names = [*students, *unchanged]
    before = fingerprints(run_dir, names)

    assert runner(change, True) == run_dir
    after = fingerprints(run_dir, names)
    for name in students:
        assert after[name] != before[name], f"{name} was not trained again"
    for name in unchanged:
        assert after[name] == before[name], name

    fresh = runner([*change, f"runs_dir={tmp_path / 'fresh'}"], False)
    assert fresh != run_dir
    assert fingerprints(fresh, names) == after
    for folder in students.values():
        assert_same_weights(run_dir / folder, fresh / folder)
    for name in students:  # a finished student leaves no checkpoint to resume by mistake
        assert not (run_dir / "checkpoints" / name).exists(), f"{name}'s checkpoints were left"
        assert not (run_dir / "checkpoints" / f"{name}.fingerprint").exists()

    # The same recipe again: nothing trains.
    state = untouched(run_dir, list(students.values()))
    runner(change, True)
    assert untouched(run_dir, list(students.values())) == state


# --- language model ----------------------------------------------------------------------------


@pytest.fixture
def lm_runner(tmp_path, tiny_teacher_dir, corpus_file) -> Runner:
    recipe = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file, steps=2)
    recipe["stages"] = ["teach", "distill", "baseline"]

    def runner(overrides: list[str], resume: bool) -> Path:
        return run(load_recipe(recipe, overrides), resume=resume).run_dir

    return runner


def test_lm_a_changed_lr_retrains_like_a_fresh_run(lm_runner, tmp_path):
    check_a_changed_input_retrains_like_a_fresh_run(
        lm_runner,
        tmp_path,
        ["train.lr=5.0e-3"],
        students={"student": "student", "baseline": "baseline"},
        unchanged=["teach"],
    )


# --- classify ----------------------------------------------------------------------------------

JSD = "{loss: jsd, weight: 0.7, temperature: 2.0, beta: 0.3}"
CE = "{loss: cross_entropy, weight: 0.3}"


@pytest.fixture
def classify_runner(tmp_path, chat_teacher_dir) -> Runner:  # noqa: F811
    student = make_bert_folder(tmp_path / "bert")
    rows = [{"text": "to sleep", "label": "sleep"}, {"text": "to die", "label": "death"}] * 2
    path = classify_recipe(tmp_path, chat_teacher_dir, student, rows)
    base = ["student.adapters=[full, lora]", f"loss=[{JSD}, {CE}]"]

    def runner(overrides: list[str], resume: bool) -> Path:
        return run(load_recipe(path, [*base, *overrides]), resume=resume).run_dir

    return runner


CLASSIFY_STUDENTS = {"student-full": "student-full", "student-lora": "student-lora"}


@pytest.mark.parametrize(
    ("change", "students", "unchanged"),
    [
        (["train.lr=5.0e-3"], {**CLASSIFY_STUDENTS, "baseline": "baseline"}, []),
        ([f"loss=[{JSD.replace('0.3}', '0.6}')}, {CE}]"], CLASSIFY_STUDENTS, ["baseline"]),
        ([f"loss=[{JSD.replace('2.0', '4.0')}, {CE}]"], CLASSIFY_STUDENTS, ["baseline"]),
    ],
    ids=["lr", "jsd-beta", "temperature"],
)
def test_classify_a_changed_input_retrains_like_a_fresh_run(
    classify_runner, tmp_path, change, students, unchanged
):
    check_a_changed_input_retrains_like_a_fresh_run(
        classify_runner, tmp_path, change, students=students, unchanged=unchanged
    )


class Killed(Exception):
    """A process killed mid-run."""


def test_a_checkpoint_from_other_inputs_is_discarded_not_resumed(
    classify_runner, tmp_path, monkeypatch
):
    """A run killed after a first checkpoint, resumed with another lr: the checkpoint was
    made with the old lr, so training starts again (resuming it would mix the two)."""
    real_train = student_stage.train

    def killed_after_one_step(*args, **kwargs):
        real_train(*args, **{**kwargs, "until": 1})
        raise Killed("killed after step 1")

    with monkeypatch.context() as patch:
        patch.setattr(student_stage, "train", killed_after_one_step)
        with pytest.raises(Killed):
            classify_runner(["student.adapters=[full]", "eval.baseline=false"], False)
    run_dir = tmp_path / "runs" / "tiny-classify"
    state = json.loads((run_dir / "checkpoints" / "student-full" / "state.json").read_text())
    assert state["step"] == 1

    change = ["student.adapters=[full]", "eval.baseline=false", "train.lr=5.0e-3"]
    classify_runner(change, True)
    fresh = classify_runner([*change, f"runs_dir={tmp_path / 'fresh'}"], False)
    assert_same_weights(run_dir / "student-full", fresh / "student-full")


# --- reason ------------------------------------------------------------------------------------


@pytest.fixture
def reason_runner(tmp_path, monkeypatch, chat_teacher) -> Iterator[Runner]:  # noqa: F811
    monkeypatch.setenv(KEY_ENV, "sk-test")
    path = reason_recipe(tmp_path, chat_teacher)
    with scripted(Script(reply=work_it_out)) as url:
        endpoint = [f"teach.endpoint.base_url={url}", f"teach.endpoint.api_key_env={KEY_ENV}"]

        def runner(overrides: list[str], resume: bool) -> Path:
            return run(load_recipe(path, [*endpoint, *overrides]), resume=resume).run_dir

        yield runner


def test_reason_a_changed_lr_retrains_like_a_fresh_run(reason_runner, tmp_path):
    check_a_changed_input_retrains_like_a_fresh_run(
        reason_runner,
        tmp_path,
        ["train.lr=5.0e-3"],
        students={"student": "student", "answers": "answers-student"},
    )


# --- context -----------------------------------------------------------------------------------


@pytest.fixture
def context_runner(tmp_path, chat_teacher_dir) -> Runner:  # noqa: F811
    path = context_recipe(tmp_path, chat_teacher_dir, steps=3)

    def runner(overrides: list[str], resume: bool) -> Path:
        return run(load_recipe(path, overrides), resume=resume).run_dir

    return runner


@pytest.mark.parametrize(
    "change",
    [["student.lora.lr=2.0e-2"], ["context.system=answer as hamlet, in few words."]],
    ids=["adapter-lr", "context"],
)
def test_context_a_changed_input_retrains_like_a_fresh_run(context_runner, tmp_path, change):
    check_a_changed_input_retrains_like_a_fresh_run(
        context_runner, tmp_path, change, students={"student": "student"}
    )
