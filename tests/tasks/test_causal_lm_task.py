"""The causal-LM task: the shift, the token count, padding, and precision in the loop."""

from __future__ import annotations

import math

import pytest
import torch

from potstill.data import Blocks
from potstill.data.batch import Batch
from potstill.losses import LossTerm
from potstill.signals import SignalRequest
from potstill.tasks.causal_lm import CausalLM
from potstill.teachers import LiveTeacher
from potstill.train.loop import train
from potstill.train.settings import TrainConfig
from tests.conftest import make_llama

VOCAB = 50
HINTON = [LossTerm("forward_kl", 0.5, 2.0), LossTerm("cross_entropy", 0.5)]


def test_request_follows_the_terms():
    assert CausalLM(HINTON).request == SignalRequest(distributions=True)
    assert CausalLM([LossTerm("cross_entropy")]).request.empty


def test_count_is_the_shifted_labels_that_are_not_padding():
    ids = torch.randint(1, VOCAB, (2, 6))
    labels = ids.clone()
    labels[0, :2] = -100  # a prompt
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False  # padding
    labels[1, 4:] = -100
    batch = Batch.of(ids, labels, torch.tensor([0, 1]), mask)
    assert CausalLM(HINTON).count(batch) == (5 - 1) + 3  # row 0: t=2..5; row 1: t=1..3


def test_right_padding_changes_nothing():
    """The same two sequences, one padded on the right, give the loss of the unpadded ones."""
    teacher, student = make_llama(VOCAB, 2, seed=1).eval(), make_llama(VOCAB, 2, seed=2).eval()
    g = torch.Generator().manual_seed(0)
    short = torch.randint(1, VOCAB, (1, 5), generator=g)
    long = torch.randint(1, VOCAB, (1, 8), generator=g)
    padded = torch.cat([short, torch.zeros(1, 3, dtype=torch.long)], dim=1)  # (1, 8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 5:] = False
    ids = torch.cat([padded, long])
    labels = ids.masked_fill(~mask, -100)
    batch = Batch.of(ids, labels, torch.tensor([0, 1]), mask)
    task = CausalLM(HINTON, chunk_tokens=4)
    live = LiveTeacher(teacher)
    with torch.no_grad():
        total, _ = task.loss(
            student, batch, live.outputs(batch, task.request), num_tokens=task.count(batch)
        )
        parts = []
        for row in (short, long):
            one = Batch.of(row, row.clone(), torch.tensor([0]))
            # num_tokens=1: the sum over the sequence's tokens
            loss, _ = task.loss(student, one, live.outputs(one, task.request), num_tokens=1)
            parts.append(loss)
    torch.testing.assert_close(total, sum(parts) / task.count(batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_autocast_precision_trains_on_cpu(tmp_path, dtype):
    """train.precision=bf16 runs the forward passes under autocast; the loss stays close."""
    teacher = make_llama(VOCAB, 2, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (8, 12), generator=g)
    blocks = Blocks(ids, ids.clone())
    cfg = TrainConfig(steps=2, batch_size=4, warmup=1, lr=1e-3)
    losses = {}
    for name, autocast in (("fp32", None), ("low", dtype)):
        student = make_llama(VOCAB, 2, seed=2)
        result = train(
            student,
            blocks,
            CausalLM(HINTON),
            cfg,
            teacher=LiveTeacher(teacher, autocast_dtype=autocast),
            name=name,
            checkpoint_dir=tmp_path / name,
            metrics_path=tmp_path / "metrics.jsonl",
            autocast_dtype=autocast,
        )
        losses[name] = result.final_loss
        assert next(student.parameters()).dtype == torch.float32  # weights stay fp32
    assert math.isfinite(losses["low"]) and losses["low"] != losses["fp32"]
    assert abs(losses["low"] - losses["fp32"]) < 0.05 * losses["fp32"]
