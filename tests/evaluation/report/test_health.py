"""A broken training run: the verdict from its loss curve, and a report that says which
model broke and gives no gap closed anywhere (headline, markdown, HTML, terminal)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from potstill.evaluation.report import build_report, summary_table, write_report
from potstill.evaluation.report.format import headline
from potstill.evaluation.report.health import training_health
from tests.conftest import run_cli, tiny_recipe
from tests.evaluation.report.numbers import DATA, RECIPE, RUN, plausible_curves, three_models


def curve(losses: list[float], **extra) -> list[dict]:
    return [{"step": step, "loss": loss, **extra} for step, loss in enumerate(losses, 1)]


def falling(steps: int, noise: float = 0.15) -> list[float]:
    """A healthy curve: 10 → 4 nats, with a deterministic wobble of ±`noise`."""
    return [4.0 + 6.0 * math.exp(-s / 20) + noise * math.sin(3.7 * s) for s in range(steps)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_a_non_finite_loss_is_a_divergence_at_its_step(bad):
    losses = falling(40)
    losses[25] = bad
    health = training_health(curve(losses))
    assert health.status == "diverged"
    assert "at step 26" in health.reason and "not finite" in health.reason


def test_a_run_that_ends_far_above_its_best_diverged():
    # Falls to ~4 by step 60, then blows up to 7 and stays there for the last 10 steps.
    losses = falling(90) + [7.0 + 0.1 * (s % 2) for s in range(10)]
    health = training_health(curve(losses))
    assert health.status == "diverged"
    assert "training loss ended at 7.05 nats (mean of the last 10 logged steps)" in health.reason
    assert "above its best 4." in health.reason


@pytest.mark.parametrize(
    "losses",
    [
        falling(100),  # healthy, noisy
        falling(100, noise=0.0),
        falling(60) + [9.0] * 5 + falling(100)[60:],  # a spike it recovered from
        falling(5),  # too short to judge the end: only rule (a)
        [4.0] * 50 + [4.25] * 10,  # ends 0.25 nats up: within the 0.3-nat margin
        [10.0] * 50 + [10.4] * 10,  # 0.4 nats up but 4%: within the 5% margin
    ],
)
def test_healthy_curves_are_ok(losses):
    health = training_health(curve(losses))
    assert health.status == "ok" and health.skipped_steps == 0


def test_the_margins_are_absolute_and_relative():
    assert training_health(curve([4.0] * 50 + [4.35] * 10)).status == "diverged"
    assert training_health(curve([10.0] * 50 + [10.6] * 10)).status == "diverged"


def test_skipped_steps_are_counted_and_left_out_of_the_verdict():
    rows = curve(falling(40))
    rows[10] |= {"loss": 90.0, "skipped": True}  # the loop threw this step away
    rows[20]["skipped"] = True
    rows[30]["skipped"] = False
    health = training_health(rows)
    assert health.status == "ok" and health.skipped_steps == 2
    assert "2 update(s) skipped" in health.reason


def test_a_non_finite_loss_is_a_break_even_when_its_update_was_skipped():
    """The loss is computed before the update: the weights themselves gave the NaN."""
    rows = curve(falling(40))
    rows[10] |= {"loss": float("nan"), "skipped": True}
    health = training_health(rows)
    assert health.status == "diverged" and "not finite" in health.reason


def test_a_run_that_skips_too_many_updates_is_not_training():
    rows = curve(falling(40))
    for row in rows[5:10]:
        row["skipped"] = True  # 5 of 40: over a tenth
    health = training_health(rows)
    assert health.status == "diverged" and health.reason.startswith("5 of 40 updates")
    rows[5]["skipped"] = False  # 4 of 40: within it
    assert training_health(rows).status == "ok"


def with_heldout(losses: list[float], heldout: dict[int, float]) -> list[dict]:
    """A healthy training curve with held-out losses at the given steps."""
    rows = curve(losses)
    for step, value in heldout.items():
        rows[step - 1]["heldout_loss"] = value
    return rows


def test_a_heldout_loss_that_ends_far_above_its_lowest_diverged():
    # Training loss still falls; the held-out loss bottoms out at step 40 and climbs.
    rows = with_heldout(falling(60), {20: 5.0, 40: 4.4, 50: 4.6, 60: 4.9})
    health = training_health(rows)
    assert health.status == "diverged"
    assert health.reason == (
        "held-out loss ended at 4.90 nats (step 60), 0.50 above its lowest 4.40 (step 40)"
    )
    # the report says which model and why
    curves = plausible_curves()
    curves["student"] = rows
    report = build_report(
        kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models(), curves=curves
    )
    assert report.summary.gap_closed is None
    label, value, sentence = headline(report)[0]
    assert (label, value) == ("training broke", "student diverged")
    assert sentence.startswith("The student's held-out loss ended at 4.90 nats")


@pytest.mark.parametrize(
    ("heldout", "status"),
    [
        ({20: 5.0, 40: 4.4, 60: 4.69}, "ok"),  # 0.29 nats up: within the 0.3-nat margin
        ({20: 11.0, 40: 10.0, 60: 10.45}, "ok"),  # 0.45 nats up but 4.5%: within 5%
        ({20: 11.0, 40: 10.0, 60: 10.6}, "diverged"),  # 0.6 nats and 6%
        ({40: 4.4, 60: 6.0}, "ok"),  # two points: not judged
        ({20: 5.0, 40: 4.4, 60: 4.3}, "ok"),  # the last is the lowest
        ({20: 5.0, 40: 4.4, 60: float("nan")}, "diverged"),  # not finite at the end
        ({20: float("nan"), 40: 4.4, 60: 4.5}, "ok"),  # earlier non-finite: left out
    ],
)
def test_heldout_margins_and_minimum_points(heldout, status):
    health = training_health(with_heldout(falling(60), heldout))
    assert health.status == status, health.reason
    if status == "ok" and len(heldout) >= 3:
        assert "held-out loss did not end above its lowest" in health.reason


def test_heldout_losses_of_skipped_steps_count():
    """A skipped update leaves the weights as they were: its held-out loss still measures
    them, so it is judged (unlike its training loss)."""
    rows = with_heldout(falling(60), {20: 5.0, 40: 4.4, 60: 5.0})
    rows[59]["skipped"] = True
    health = training_health(rows)
    assert health.status == "diverged" and "step 60" in health.reason


def broken_report(role: str = "baseline"):
    curves = plausible_curves()
    curves[role] = curve(falling(40) + [float("nan")] * 3)
    return build_report(
        kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models(), curves=curves
    )


@pytest.mark.parametrize("role", ["student", "baseline"])
def test_a_broken_run_is_the_headline_and_no_gap_closed_is_given(tmp_path, role):
    report = broken_report(role)
    assert report.models[role].training.status == "diverged"
    other = "baseline" if role == "student" else "student"
    assert report.models[other].training.status == "ok"
    assert report.models["teacher"].training is None  # not trained here
    assert report.summary.gap_closed is None
    label, value, sentence = headline(report)[0]
    assert (label, value) == ("training broke", f"{role} diverged")
    assert sentence.startswith(f"The {role}'s training loss was not finite (nan) at step 41.")
    assert (
        "not meaningful" in sentence
        and "Rerun with a lower train.lr (this run: 0.0003)" in sentence
    )
    paths = write_report(tmp_path, report, plausible_curves())
    texts = [paths["report.md"].read_text(), paths["report.html"].read_text()]
    texts.append(summary_table(report))
    for text in texts:
        assert "gap closed" not in text.lower() and f"{role} diverged" in text
    saved = json.loads(paths["report.json"].read_text())
    assert saved["models"][role]["training"] == {
        "status": "diverged",
        "reason": "training loss was not finite (nan) at step 41",
        "skipped_steps": 0,
        "rollbacks": 0,
    }
    assert saved["summary"]["gap_closed"] is None


def test_healthy_runs_keep_the_gap_closed_and_note_skipped_updates():
    curves = plausible_curves()
    curves["student"][7]["skipped"] = True
    report = build_report(
        kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models(), curves=curves
    )
    assert report.summary.gap_closed == pytest.approx(0.5)
    lines = {label: (value, sentence) for label, value, sentence in headline(report)}
    assert lines["gap closed"][0] == "50%" and "training broke" not in lines
    assert lines["skipped updates"][0] == "student 1"
    assert summary_table(report).splitlines()[-2:] == [
        "gap closed: 50%",
        "skipped updates: student 1",
    ]


def test_a_rollback_is_told_and_its_row_is_not_a_loss():
    """The loop's rollback row (`potstill.train.rollback`) has no loss: it is counted, told
    in the health reason and a headline line, and the run stays judged on its losses."""
    curves = plausible_curves()
    event = {
        "model": "baseline", "step": 20, "event": "rollback", "from_step": 30,
        "checked": "heldout_loss", "value": 6.2, "best": 4.4, "lr_scale": 0.5,
    }  # fmt: skip
    curves["baseline"].insert(20, event)
    report = build_report(
        kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models(), curves=curves
    )
    training = report.models["baseline"].training
    assert (training.status, training.rollbacks) == ("ok", 1)
    assert training.reason.endswith(
        "rolled back 1 time(s): heldout_loss 6.20 at step 30 against its best 4.40 sent it "
        "back to step 20 at lr x0.5"
    )
    assert report.summary.gap_closed == pytest.approx(0.5)
    lines = {label: (value, sentence) for label, value, sentence in headline(report)}
    assert lines["rollbacks"][0] == "baseline 1"
    assert "The baseline's training loss stayed finite" in lines["rollbacks"][1]
    assert summary_table(report).splitlines()[-1] == "rollbacks: baseline 1"


def test_a_run_with_a_huge_learning_rate_says_so_end_to_end(
    tmp_path, tiny_teacher_dir, corpus_file, capsys, one_thread
):
    """The real CLI on the tiny teacher: at lr 1e4 the student's and the baseline's
    losses blow up, and the report says so instead of a gap closed."""
    recipe = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file, steps=8)
    recipe["train"] |= {"lr": 1.0e4, "warmup": 0}
    path = tmp_path / "huge-lr.yaml"
    path.write_text(yaml.safe_dump(recipe))
    threads = torch.get_num_threads()
    code, out, err = run_cli("run", str(path), capsys=capsys)
    torch.set_num_threads(threads)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny"
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["kind"] == "lm"
    broken = [
        m for m in ("student", "baseline") if saved["models"][m]["training"]["status"] != "ok"
    ]
    assert broken, saved["models"]
    assert saved["summary"]["gap_closed"] is None
    markdown = (run_dir / "report.md").read_text()
    assert markdown.splitlines()[4].startswith("- **training broke: ")
    assert "lower train.lr" in markdown
    for text in (markdown, (run_dir / "report.html").read_text(), out):
        assert "gap closed" not in text.lower()
    assert "training broke:" in out
