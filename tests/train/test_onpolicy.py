"""On-policy batches (GKD): which batches the student samples, what a sampled batch holds,
that its samples are the student's own distribution, and that only teacher terms train
on them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from potstill.data.chat import ChatRows
from potstill.losses import LossTerm
from potstill.models.student import layer_subset
from potstill.tasks.causal_lm import CausalLM
from potstill.teachers import LiveTeacher
from potstill.train.loop import train
from potstill.train.onpolicy import OnPolicyChats
from potstill.train.settings import TrainConfig
from potstill.util.errors import PotstillError
from potstill.util.tokens import IGNORE_INDEX
from tests.conftest import make_llama
from tests.data.test_chat import chat_tokenizer

QUESTIONS = ["To be?", "Who is there?", "What, has this thing appeared?", "Is it not?"]
REPLIES = ["Or not to be.", "Nay, answer me.", "I have seen nothing.", "It is."]
KD = LossTerm(loss="forward_kl", weight=0.5)
CE = LossTerm(loss="cross_entropy", weight=0.5)


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer()


@pytest.fixture
def chats(tokenizer):
    turns = [([{"role": "user", "content": q}], r) for q, r in zip(QUESTIONS, REPLIES, strict=True)]
    return ChatRows.build(tokenizer, turns * 4, max_length=64)


@pytest.fixture
def student(tokenizer):
    return make_llama(len(tokenizer), layers=2, seed=3)


def _on_policy(chats, student, tokenizer, **kw):
    return OnPolicyChats(chats, student, tokenizer, **{"fraction": 1.0, "max_tokens": 12, **kw})


def test_with_no_fraction_every_batch_is_the_reference(chats, student, tokenizer):
    data = _on_policy(chats, student, tokenizer, fraction=0.0)
    for index in (torch.tensor([0, 1]), torch.tensor([5, 2, 9])):
        got, want = data.batch(index), chats.batch(index)
        assert not got.sampled
        assert torch.equal(got.input_ids, want.input_ids)
        assert torch.equal(got.labels, want.labels)
    assert data.sampled_batches == 0


def test_the_share_of_on_policy_batches_is_the_fraction_and_fixed_by_the_seed(
    chats, student, tokenizer
):
    data = _on_policy(chats, student, tokenizer, fraction=0.3, seed=7)
    indices = [torch.tensor([i, (i * 7 + 3) % 16, (i * 5 + 1) % 16]) for i in range(2000)]
    picks = [data.is_on_policy(i) for i in indices]
    assert abs(sum(picks) / len(picks) - 0.3) < 0.03
    again = _on_policy(chats, student, tokenizer, fraction=0.3, seed=7)
    assert picks == [again.is_on_policy(i) for i in indices]
    other = _on_policy(chats, student, tokenizer, fraction=0.3, seed=8)
    assert picks != [other.is_on_policy(i) for i in indices]


def test_a_sampled_batch_keeps_the_prompts_and_labels_the_students_reply(chats, student, tokenizer):
    data = _on_policy(chats, student, tokenizer)
    index = torch.tensor([1, 2, 3])
    batch = data.batch(index)
    assert batch.sampled and torch.equal(batch.index, index)
    assert data.sampled_batches == 1
    replies = 0
    for row, i in enumerate(index.tolist()):
        prompt = chats.ids[i][: chats.prompt[i]]
        length = int(batch.attention_mask[row].sum())
        assert batch.input_ids[row, : len(prompt)].tolist() == prompt
        labels = batch.labels[row]
        assert (labels[: len(prompt)] == IGNORE_INDEX).all()
        assert (labels[length:] == IGNORE_INDEX).all()
        reply = batch.input_ids[row, len(prompt) : length].tolist()
        assert labels[len(prompt) : length].tolist() == reply
        assert 1 <= len(reply) <= 12
        # A reply stops at its first end token, or runs to max_tokens.
        end = tokenizer.eos_token_id
        assert end not in reply[:-1] and (reply[-1] == end or len(reply) == 12)
        replies += len(reply)
    assert data.sampled_tokens == replies
    # The same model, seed and examples draw the same replies (a resumed run).
    assert torch.equal(data.batch(index).input_ids, batch.input_ids)


def test_samples_follow_the_students_own_distribution_not_its_generation_config(
    chats, student, tokenizer
):
    # A generation config asking for greedy-like decoding must not narrow the samples.
    student.generation_config.top_k = 1
    student.generation_config.repetition_penalty = 3.0
    prompt = chats.ids[0][: chats.prompt[0]]
    data = _on_policy(chats, student, tokenizer, max_tokens=1)
    firsts = torch.tensor([data.sample([prompt], seed=s)[0][0] for s in range(3000)])
    with torch.no_grad():
        logits = student(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    want = F.softmax(logits, dim=-1)
    got = torch.bincount(firsts, minlength=len(want)).double() / len(firsts)
    # Total variation of 3,000 draws from the model's softmax: small, though the model
    # spreads its mass over the whole vocabulary (a top-k of 1 would give ~1 here).
    assert 0.5 * (got - want).abs().sum() < 0.25
    assert len(set(firsts.tolist())) > 50


def test_a_near_zero_temperature_samples_the_greedy_reply(chats, student, tokenizer):
    prompt = chats.ids[2][: chats.prompt[2]]
    data = _on_policy(chats, student, tokenizer, temperature=1e-4, max_tokens=8)
    got = data.sample([prompt], seed=0)[0]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(len(got)):
            ids = torch.cat([ids, student(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    assert got == ids[0, len(prompt) :].tolist()


def test_only_teacher_terms_train_on_the_students_samples(chats, student, tokenizer):
    teacher = make_llama(len(tokenizer), layers=2, seed=4).eval()
    batch = _on_policy(chats, student, tokenizer).batch(torch.tensor([0, 1]))
    outputs = LiveTeacher(teacher).outputs(batch, CausalLM([KD]).request)
    count = CausalLM([KD]).count(batch)
    mixed, parts = CausalLM([CE, KD]).loss(student, batch, outputs, num_tokens=count)
    alone, _ = CausalLM([KD]).loss(student, batch, outputs, num_tokens=count)
    assert torch.allclose(mixed, alone) and "cross_entropy" not in parts
    with pytest.raises(ValueError, match="compares with the teacher"):
        CausalLM([CE]).loss(student, batch, None, num_tokens=count)


def test_bad_settings_are_refused(chats, student, tokenizer):
    with pytest.raises(ValueError, match="fraction"):
        _on_policy(chats, student, tokenizer, fraction=1.5)
    with pytest.raises(ValueError, match="temperature"):
        _on_policy(chats, student, tokenizer, temperature=0.0)
    data = _on_policy(chats, student, tokenizer, max_length=4)
    with pytest.raises(ValueError, match="no room for a reply"):
        data.batch(torch.tensor([0]))


def test_a_student_trains_on_a_mix_of_its_own_samples_and_the_references(
    chats, tokenizer, tmp_path
):
    teacher = make_llama(len(tokenizer), layers=3, seed=1).eval()
    student = layer_subset(teacher, [0, 2])
    data = _on_policy(chats, student, tokenizer, fraction=0.5, seed=1)
    cfg = TrainConfig(steps=8, batch_size=2, warmup=1, lr=1e-2)
    result = train(
        student,
        data,
        CausalLM([CE, KD]),
        cfg,
        teacher=LiveTeacher(teacher),
        name="on-policy",
        checkpoint_dir=tmp_path / "ckpt",
        metrics_path=tmp_path / "metrics.jsonl",
    )
    assert result.steps == 8 and torch.isfinite(torch.tensor(result.final_loss))
    # Some steps were the student's samples and some the references (plus the loop's
    # one sample batch when it looks for the fused head).
    assert 1 <= data.sampled_batches <= 8


def test_on_policy_data_under_fsdp_is_refused(chats, student, tokenizer, tmp_path, monkeypatch):
    """FSDP trains a sharded twin and brings the student up to date only at checkpoints:
    samples drawn from it would be stale, so the combination is refused before any work."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(PotstillError, match="which FSDP holds only in shards"):
        train(
            student,
            _on_policy(chats, student, tokenizer),
            CausalLM([KD]),
            TrainConfig(steps=1, batch_size=2, parallel="fsdp"),
            teacher=LiveTeacher(make_llama(len(tokenizer), layers=2, seed=1)),
            name="student",
            checkpoint_dir=tmp_path / "ckpt",
            metrics_path=tmp_path / "m.jsonl",
        )
