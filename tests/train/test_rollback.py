"""Rolling a run that broke back to its last good check, at half the learning rate
(`potstill.train.rollback`): exact restores, the same weights after a kill and resume, and
the same protection whether the check is a held-out loss or the training loss."""

import json

import pytest
import torch

from potstill.data import Blocks
from potstill.evaluation.report.health import training_health
from potstill.tasks.causal_lm import heldout_loss
from potstill.train.rollback import rose
from potstill.train.settings import TrainConfig
from tests.train.test_loop import _heldout, _params, _rows, _run, _student

# lr 3 with no clipping breaks the tiny student: its held-out loss is 160 at step 3 and
# 173 at step 6, and at half the rate it is 60 there instead (one rollback, from 6 to 3).
BREAKS = {"steps": 24, "eval_every": 3, "lr": 3.0, "warmup": 0, "clip": None, "spike_skip": None}


def _steps(rows):
    return [row for row in rows if "event" not in row]


def _events(rows):
    return [row for row in rows if "event" in row]


def _same_rows(a, b):
    """The rows of two runs, but for wall-clock fields."""
    drop = {"elapsed", "tokens_per_second"}
    return [{k: v for k, v in r.items() if k not in drop} for r in a] == [
        {k: v for k, v in r.items() if k not in drop} for r in b
    ]


@pytest.fixture
def evaluate(blocks):
    held = _heldout(blocks)
    return heldout_loss(held.input_ids, held.labels, batch_size=2)


def test_a_check_that_rose_goes_back_to_the_good_point_at_half_the_lr(
    blocks, teacher, tmp_path, evaluate
):
    _run(_student(teacher), blocks, teacher, tmp_path / "on", evaluate=evaluate, **BREAKS)
    _run(
        _student(teacher), blocks, teacher, tmp_path / "off", evaluate=evaluate, rollbacks=0,
        **BREAKS,
    )  # fmt: skip
    on, off = _rows(tmp_path / "on" / "metrics.jsonl"), _rows(tmp_path / "off" / "metrics.jsonl")
    assert _events(off) == [] and len(_steps(off)) == 24
    (event,) = _events(on)
    heldout_off = {row["step"]: row["heldout_loss"] for row in off if "heldout_loss" in row}
    assert event["step"] == 3 and event["from_step"] == 6
    assert event["checked"] == "heldout_loss" and event["lr_scale"] == 0.5
    assert event["value"] == heldout_off[6] and event["best"] == heldout_off[3]
    assert rose(event["value"], event["best"])
    steps = _steps(on)
    assert [row["step"] for row in steps] == list(range(1, 25))  # the abandoned rows dropped
    assert _same_rows(steps[:3], _steps(off)[:3])
    # step 4 again, at half the rate, on the batches after the ones that broke it
    assert event["skipped_batches"] == 3
    assert steps[3]["loss"] != _steps(off)[3]["loss"]
    assert steps[3]["lr"] == pytest.approx(0.5 * _steps(off)[3]["lr"], rel=1e-12)
    assert steps[5]["heldout_loss"] < event["best"]  # and this time it did not rise
    health = training_health(on)
    assert health.rollbacks == 1 and "rolled back 1 time(s)" in health.reason
    assert "sent it back to step 3 at lr x0.5" in health.reason


class _Recorded(Blocks):
    """Blocks that note every batch the loop asks for."""

    def __init__(self, blocks):
        super().__init__(blocks.input_ids, blocks.labels)
        self.asked: list[list[int]] = []

    def batch(self, index):
        self.asked.append(index.tolist())
        return super().batch(index)


def test_a_rollback_trains_on_the_batches_after_the_ones_that_broke_it(
    blocks, teacher, tmp_path, evaluate
):
    """PaLM's remedy: the steps from the good point on take the data past the abandoned
    steps' batches, not those batches again (they broke the run once)."""
    on, off = _Recorded(blocks), _Recorded(blocks)
    _run(_student(teacher), on, teacher, tmp_path / "on", evaluate=evaluate, **BREAKS)
    _run(_student(teacher), off, teacher, tmp_path / "off", evaluate=evaluate, rollbacks=0,
         **{**BREAKS, "steps": 27})  # fmt: skip
    (event,) = _events(_rows(tmp_path / "on" / "metrics.jsonl"))
    assert (event["step"], event["from_step"]) == (3, 6)
    prepare = 1  # the loop's first call shapes the task on one block
    assert on.asked[:prepare] == off.asked[:prepare]
    trained_on, trained_off = on.asked[prepare:], off.asked[prepare:]
    assert trained_on[:6] == trained_off[:6]  # steps 1-6, the 3 abandoned included
    assert trained_on[6:24] == trained_off[6:24]  # step 4 again took step 7's batch, and on
    # steps 22-24 would take batches 25-27, past the 24 planned: the schedule starts over,
    # so the run visits only the blocks a cache taught for its schedule holds
    assert trained_on[24:] == trained_off[:3]
    assert len(trained_on) == 24 + 3  # 24 steps, 3 of them trained twice


@pytest.mark.parametrize("until", [5, 7])
def test_a_killed_run_rolls_back_where_an_unbroken_one_does(
    blocks, teacher, tmp_path, evaluate, until
):
    """Killed between checks before the rollback (5: the checkpoint keeps the step-3 good
    point beside it) or after it (7): resumed, the same weights and rows, bitwise."""
    straight = _student(teacher)
    _run(straight, blocks, teacher, tmp_path / "straight", evaluate=evaluate, **BREAKS)
    killed = tmp_path / "killed"
    _run(_student(teacher), blocks, teacher, killed, evaluate=evaluate, until=until, **BREAKS)
    assert (killed / "ckpt" / "good" / "state.json").is_file()
    assert json.loads((killed / "ckpt" / "good" / "state.json").read_text())["step"] == (
        until // 3 * 3
    )
    resumed = _student(teacher)
    _run(resumed, blocks, teacher, killed, evaluate=evaluate, resume=True, **BREAKS)
    for name, weight in _params(straight).items():
        assert torch.equal(weight, _params(resumed)[name]), name
    assert _same_rows(
        _rows(killed / "metrics.jsonl"), _rows(tmp_path / "straight" / "metrics.jsonl")
    )


def test_without_a_heldout_loss_the_training_loss_is_checked(blocks, teacher, tmp_path):
    _run(_student(teacher), blocks, teacher, tmp_path, **BREAKS)
    events = _events(_rows(tmp_path / "metrics.jsonl"))
    assert events and all(event["checked"] == "loss" for event in events)
    assert events[0]["step"] == 3 and events[0]["from_step"] == 6


def test_rollbacks_stop_at_the_limit_and_the_run_goes_on(blocks, teacher, tmp_path):
    """A check that rises every time (the weights' size, which Adam at lr 3 grows): three
    rollbacks, each halving the rate again, then the run trains to its last step."""

    def size(model):
        return float(sum(p.abs().sum() for p in model.parameters()))

    _run(_student(teacher), blocks, teacher, tmp_path, evaluate=size, **BREAKS)
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [event["lr_scale"] for event in _events(rows)] == [0.5, 0.25, 0.125]
    assert [row["step"] for row in _steps(rows)] == list(range(1, 25))
    assert [(event["from_step"], event["step"]) for event in _events(rows)] == [(6, 3)] * 3
    # no later check was accepted, so the last checkpoint keeps the step-3 good point
    assert json.loads((tmp_path / "ckpt" / "good" / "state.json").read_text())["step"] == 3


def test_rollbacks_decide_weights_so_the_check_cadence_is_part_of_the_identity():
    on, off = TrainConfig(), TrainConfig(rollbacks=0)
    assert on.identity() != TrainConfig(eval_every=5).identity()
    assert off.identity() == TrainConfig(rollbacks=0, eval_every=5, eval_blocks=2).identity()
