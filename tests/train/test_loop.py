import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from potstill.data import Blocks
from potstill.losses import LossTerm
from potstill.models.student import layer_subset
from potstill.tasks.causal_lm import CausalLM, heldout_loss
from potstill.teachers import LiveTeacher
from potstill.train.loop import train
from potstill.train.schedule import warmup_cosine
from potstill.train.settings import TrainConfig
from tests.train.conftest import VOCAB

HINTON = [
    LossTerm(loss="forward_kl", weight=0.5, temperature=2.0),
    LossTerm(loss="cross_entropy", weight=0.5),
]


def _student(teacher):
    return layer_subset(teacher, [0, 2])


def _run(
    student,
    blocks,
    teacher,
    tmp_path,
    terms=HINTON,
    resume=False,
    until=None,
    evaluate=None,
    **cfg,
):
    config = TrainConfig(**{"steps": 4, "batch_size": 4, "warmup": 1, "lr": 1e-2, **cfg})
    return train(
        student,
        blocks,
        CausalLM(terms, chunk_tokens=config.chunk_tokens),
        config,
        teacher=LiveTeacher(teacher),
        name="student",
        checkpoint_dir=tmp_path / "ckpt",
        metrics_path=tmp_path / "metrics.jsonl",
        resume=resume,
        until=until,
        evaluate=evaluate,
    )


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradient_accumulation_is_exact(blocks, teacher, tmp_path, optimizer_grads):
    """One step of 4 samples, or 2 micro-batches of 2: the same summed gradient, although
    the micro-batches hold different numbers of valid tokens."""
    grads = optimizer_grads
    _run(_student(teacher), blocks, teacher, tmp_path / "a", steps=1, batch_size=4, clip=None)
    _run(
        _student(teacher),
        blocks,
        teacher,
        tmp_path / "b",
        steps=1,
        batch_size=2,
        grad_accum=2,
        clip=None,
    )
    whole, split = grads
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_resume_from_a_midway_checkpoint(blocks, teacher, tmp_path, monkeypatch):
    straight = _student(teacher)
    _run(straight, blocks, teacher, tmp_path / "straight")
    metrics_straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()

    killed = tmp_path / "killed"
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # die during the 4th step, after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        _run(_student(teacher), blocks, teacher, killed, checkpoint_every=2)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)

    resumed = _student(teacher)
    _run(resumed, blocks, teacher, killed, resume=True, checkpoint_every=2)
    for (name, a), b in zip(_params(straight).items(), _params(resumed).values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    rows = [json.loads(r) for r in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    expected = [json.loads(r)["loss"] for r in metrics_straight]
    assert [r["loss"] for r in rows] == pytest.approx(expected, rel=1e-5)


def test_metrics_rows_carry_the_loss_terms(blocks, teacher, tmp_path):
    _run(_student(teacher), blocks, teacher, tmp_path, steps=2)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert {"model", "step", "loss", "forward_kl", "cross_entropy", "lr"} <= set(row)
        assert row["loss"] == pytest.approx(0.5 * row["forward_kl"] + 0.5 * row["cross_entropy"])


def test_logged_terms_add_up_under_gradient_accumulation(blocks, teacher, tmp_path):
    _run(_student(teacher), blocks, teacher, tmp_path, steps=2, batch_size=2, grad_accum=2)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["loss"] == pytest.approx(0.5 * row["forward_kl"] + 0.5 * row["cross_entropy"])


def test_training_lowers_the_loss(blocks, teacher, tmp_path):
    student = _student(teacher)
    terms = [LossTerm(loss="forward_kl", weight=1.0)]
    _run(student, blocks, teacher, tmp_path, terms=terms, steps=30, lr=3e-3, warmup=2)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["forward_kl"] < 0.5 * rows[0]["forward_kl"]


def test_baseline_needs_no_teacher(blocks, teacher, tmp_path):
    terms = [LossTerm(loss="cross_entropy")]
    result = _run(_student(teacher), blocks, None, tmp_path, terms=terms, steps=2)
    assert result.steps == 2 and result.tokens > 0


def test_frozen_embeddings_stay_put(blocks, teacher, tmp_path):
    student = _student(teacher)
    before = student.get_input_embeddings().weight.detach().clone()
    _run(student, blocks, teacher, tmp_path, steps=2, freeze_embeddings=True)
    assert torch.equal(before, student.get_input_embeddings().weight)


def test_the_embedding_trains_at_its_own_learning_rate(blocks, teacher, tmp_path, monkeypatch):
    """embedding_lr_scale puts the (tied) embedding in its own group at lr × scale; the
    scheduler scales every group alike; 0 keeps it in place while the rest trains."""
    seen = []
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append([(len(g["params"]), g["lr"]) for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    student = _student(teacher)
    embedding = student.get_input_embeddings().weight
    before, block = embedding.detach().clone(), _params(student)
    _run(student, blocks, teacher, tmp_path / "a", steps=2, warmup=0, embedding_lr_scale=0.0)
    assert torch.equal(before, embedding) and seen[0][-1] == (1, 0.0)
    assert not torch.equal(
        block["model.layers.0.mlp.up_proj.weight"],
        _params(student)["model.layers.0.mlp.up_proj.weight"],
    )
    seen.clear()
    _run(
        _student(teacher),
        blocks,
        teacher,
        tmp_path / "b",
        steps=2,
        warmup=0,
        embedding_lr_scale=0.1,
    )
    (_, lr), _, (one, embedding_lr) = seen[0]
    assert one == 1 and embedding_lr == pytest.approx(0.1 * lr)
    seen.clear()
    _run(_student(teacher), blocks, teacher, tmp_path / "c", steps=1)
    assert len(seen[0]) == 2  # scale 1: the usual two groups


def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [warmup_cosine(s, warmup=5, total=50, min_ratio=0.1) for s in range(50)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[-1] == pytest.approx(0.1)


@pytest.mark.parametrize("damage", ["torn metrics line", "save killed between renames"])
def test_a_kill_mid_write_resumes_to_the_same_weights(blocks, teacher, tmp_path, damage):
    straight = _student(teacher)
    _run(straight, blocks, teacher, tmp_path / "straight", checkpoint_every=2)
    _run(_student(teacher), blocks, teacher, tmp_path, until=2, checkpoint_every=2)
    if damage == "torn metrics line":
        with open(tmp_path / "metrics.jsonl", "a") as f:
            f.write('{"model": "student", "step": 3, "lo')
    else:  # the step-2 checkpoint moved aside, the next save's temporary half-made
        (tmp_path / "ckpt").rename(tmp_path / ".ckpt.old")
        (tmp_path / ".ckpt.k1ll.tmp").mkdir()
    # Other starting weights: only a resume from the step-2 checkpoint ends where the
    # uninterrupted run does.
    other = _student(teacher)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.1)
    _run(other, blocks, teacher, tmp_path, resume=True, checkpoint_every=2)
    after = other.state_dict()
    for name, weight in straight.state_dict().items():
        assert torch.equal(weight, after[name]), name  # bitwise: on from step 2, not from 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _heldout(blocks):
    """A held-out slice of its own: the blocks reversed (other batches than training's)."""
    return Blocks(blocks.input_ids.flip(0)[:3], blocks.labels.flip(0)[:3])


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_heldout_loss_is_logged_every_eval_every_steps_and_at_the_last(blocks, teacher, tmp_path):
    heldout = _heldout(blocks)
    student = _student(teacher)
    evaluate = heldout_loss(heldout.input_ids, heldout.labels, batch_size=2)
    _run(student, blocks, teacher, tmp_path, steps=5, eval_every=2, evaluate=evaluate)
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if "heldout_loss" in r] == [2, 4, 5]
    # the last: the trained model's mean next-token cross-entropy, computed here directly
    with torch.no_grad():
        logits = student(input_ids=heldout.input_ids).logits.double()  # (N, L, V)
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), heldout.labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert rows[-1]["heldout_loss"] == pytest.approx(float(expected), rel=1e-5)
    # null turns it off; a step that is evaluated but not a logging step still gets its row
    _run(_student(teacher), blocks, teacher, tmp_path / "off", evaluate=evaluate, eval_every=None)
    assert not any("heldout_loss" in r for r in _rows(tmp_path / "off" / "metrics.jsonl"))
    _run(
        _student(teacher), blocks, teacher, tmp_path / "sparse", steps=6, log_every=4,
        eval_every=3, evaluate=evaluate,
    )  # fmt: skip
    logged = _rows(tmp_path / "sparse" / "metrics.jsonl")
    assert [(r["step"], "heldout_loss" in r) for r in logged] == [(3, True), (4, False), (6, True)]


def _with_dropout(student):
    """Dropout in attention: training draws from the RNG at every forward, so an
    evaluation that drew from it, or left the model in eval mode, would change the weights."""
    for layer in student.model.layers:
        layer.self_attn.attention_dropout = 0.2
    return student


def test_heldout_evaluation_leaves_the_weights_bitwise_alone(blocks, teacher, tmp_path):
    heldout = _heldout(blocks)
    score = heldout_loss(heldout.input_ids, heldout.labels, batch_size=2)

    def careless(model):  # draws from the RNG and leaves the model in eval mode
        torch.rand(3)
        model.eval()
        return score(model)

    plain = _with_dropout(_student(teacher))
    _run(plain, blocks, teacher, tmp_path / "plain", eval_every=None)
    for label, evaluate in (("score", score), ("careless", careless)):
        watched = _with_dropout(_student(teacher))
        folder = tmp_path / label
        _run(watched, blocks, teacher, folder, eval_every=1, evaluate=evaluate)
        for name, weight in _params(plain).items():
            assert torch.equal(weight, _params(watched)[name]), (label, name)
        rows = _rows(folder / "metrics.jsonl")
        assert [r["loss"] for r in rows] == [
            r["loss"] for r in _rows(tmp_path / "plain" / "metrics.jsonl")
        ]
        assert all(math.isfinite(r["heldout_loss"]) for r in rows)
    # and a run killed midway resumes to the same weights and held-out losses
    resumed = _with_dropout(_student(teacher))
    _run(
        resumed,
        blocks,
        teacher,
        tmp_path / "killed",
        until=2,
        checkpoint_every=2,
        eval_every=1,
        evaluate=score,
    )
    resumed = _with_dropout(_student(teacher))
    _run(
        resumed,
        blocks,
        teacher,
        tmp_path / "killed",
        resume=True,
        checkpoint_every=2,
        eval_every=1,
        evaluate=score,
    )
    for name, weight in _params(plain).items():
        assert torch.equal(weight, _params(resumed)[name]), name
    assert [r["heldout_loss"] for r in _rows(tmp_path / "killed" / "metrics.jsonl")] == [
        r["heldout_loss"] for r in _rows(tmp_path / "score" / "metrics.jsonl")
    ]


def test_gradient_checkpointing_trains_the_same_weights(blocks, teacher, tmp_path):
    """Recomputing each block's activations in the backward changes no weight, and the
    student's blocks really are checkpointed."""
    plain, checkpointed = _student(teacher), _student(teacher)
    _run(plain, blocks, teacher, tmp_path / "plain")
    _run(checkpointed, blocks, teacher, tmp_path / "checkpointed", gradient_checkpointing=True)
    assert checkpointed.model.gradient_checkpointing and not plain.model.gradient_checkpointing
    assert all(layer.gradient_checkpointing for layer in checkpointed.model.layers)
    for key, weight in _params(plain).items():
        torch.testing.assert_close(_params(checkpointed)[key], weight, rtol=0, atol=1e-6)
