"""Updates skipped on gradient spikes (`potstill.train.spikes`), inside the training loop."""

import json

import pytest
import torch
from safetensors.torch import load_file

from potstill.tasks.causal_lm import CausalLM
from potstill.teachers import LiveTeacher
from potstill.train.loop import train
from potstill.train.settings import TrainConfig
from potstill.train.spikes import MIN_HISTORY, WINDOW, early_norm, is_spike, remember
from tests.train.test_loop import HINTON, _student

SPIKE_AT = MIN_HISTORY + 2  # the step (1-based) whose gradient is blown up


class Spiking(CausalLM):
    """The loss times ``scale`` on the ``at``-th call (counting from ``start``): a batch
    whose gradient is a spike (or, with ``scale`` nan, not finite)."""

    def __init__(self, *, at: int, scale: float, start: int = 0) -> None:
        super().__init__(HINTON, chunk_tokens=128)
        self.calls, self.at, self.scale = start, at, scale

    def loss(self, model, batch, teacher, *, num_tokens):
        loss, parts = super().loss(model, batch, teacher, num_tokens=num_tokens)
        self.calls += 1
        return (loss * self.scale if self.calls == self.at else loss), parts


def _train(student, blocks, teacher, folder, task, *, steps=SPIKE_AT + 2, until=None, **cfg):
    config = TrainConfig(steps=steps, batch_size=4, warmup=1, lr=1e-2, **cfg)
    return train(
        student,
        blocks,
        task,
        config,
        teacher=LiveTeacher(teacher),
        name="student",
        checkpoint_dir=folder / "ckpt",
        metrics_path=folder / "metrics.jsonl",
        resume=True,
        until=until,
    )


def _weights(folder):
    return load_file(str(folder / "ckpt" / "model.safetensors"))


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_spiking_step_is_skipped_and_logged(blocks, teacher, tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    spike = dict(at=SPIKE_AT, scale=1e4)
    _train(_student(teacher), blocks, teacher, before, Spiking(**spike), until=SPIKE_AT - 1)
    _train(_student(teacher), blocks, teacher, after, Spiking(**spike), until=SPIKE_AT)
    # The skipped step left every weight as it was.
    for key, value in _weights(before).items():
        assert torch.equal(value, _weights(after)[key]), key
    rows = _rows(after)
    assert [r["step"] for r in rows if r.get("skipped")] == [SPIKE_AT]
    assert rows[-1]["grad_norm"] > 1e3 * rows[-2]["grad_norm"]
    state = json.loads((after / "ckpt" / "state.json").read_text())
    assert state["skipped"] == 1 and len(state["grad_norms"]) == SPIKE_AT


def test_without_the_guard_the_spike_is_applied(blocks, teacher, tmp_path):
    folders = tmp_path / "guarded", tmp_path / "unguarded"
    for folder, factor in zip(folders, (10.0, None), strict=True):
        task = Spiking(at=SPIKE_AT, scale=1e4)
        _train(_student(teacher), blocks, teacher, folder, task, until=SPIKE_AT, spike_skip=factor)
    guarded, unguarded = (_weights(f) for f in folders)
    assert any(not torch.equal(guarded[k], unguarded[k]) for k in guarded)
    assert not any(r.get("skipped") for r in _rows(folders[1]))


def test_a_non_finite_gradient_is_skipped_even_unguarded(blocks, teacher, tmp_path):
    task = Spiking(at=3, scale=float("nan"))
    _train(_student(teacher), blocks, teacher, tmp_path, task, steps=5, spike_skip=None)
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path).values())
    assert [r["step"] for r in _rows(tmp_path) if r.get("skipped")] == [3]


def test_a_resumed_run_skips_what_the_whole_run_skips(blocks, teacher, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    _train(_student(teacher), blocks, teacher, whole, Spiking(at=SPIKE_AT, scale=1e4))
    _train(_student(teacher), blocks, teacher, parts, Spiking(at=SPIKE_AT, scale=1e4), until=10)
    # A new process: the call count starts where the first one stopped.
    resumed = Spiking(at=SPIKE_AT, scale=1e4, start=10)
    _train(_student(teacher), blocks, teacher, parts, resumed)
    a, b = _weights(whole), _weights(parts)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _rows(parts) if r.get("skipped")] == [SPIKE_AT]


@pytest.mark.parametrize("norm", [float("inf"), float("nan")])
def test_the_history_keeps_finite_norms_only(norm):
    history = remember([1.0] * WINDOW, norm)
    assert history == [1.0] * WINDOW and is_spike(norm, history, None)
    assert remember(history, 2.0)[-1] == 2.0 and len(remember(history, 2.0)) == WINDOW


def test_a_model_that_fitted_its_data_is_not_skipped_at_the_norms_it_began_with():
    """A classifier after a few epochs: loss near 0, norms 500x below their start. A batch
    holding one misfit text brings a norm back to its early size: no spike (it was, by
    the median rule alone); one far above the early norms still is."""
    history: list[float] = []
    for norm in [5.0] * MIN_HISTORY:
        history = remember(history, norm)
    floor = early_norm(history)  # as the loop keeps it, once the first norms are in
    for norm in [0.01] * WINDOW:
        history = remember(history, norm)
    assert floor == 5.0 and early_norm(history[:-1]) != floor  # the window has moved on
    assert is_spike(3.0, history, 10.0)  # the median rule alone
    assert not is_spike(3.0, history, 10.0, floor)
    assert is_spike(60.0, history, 10.0, floor)
