"""score_models against independent references on tiny in-process Llama models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import transformers

from potstill.evaluation.size import count_params, size_on_disk
from potstill.tasks.causal_lm import score_models
from potstill.util.errors import PotstillError
from tests.conftest import make_llama

VOCAB = 64


def tiny_llama(seed: int, vocab_size: int = VOCAB) -> transformers.LlamaForCausalLM:
    return make_llama(vocab_size, layers=2, seed=seed).eval()


@pytest.fixture(scope="module")
def blocks() -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), both (5, 16); some labels are -100, including a whole row."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (5, 16), generator=generator)
    labels = input_ids.clone()
    labels[0, 10:] = -100
    labels[2, :4] = -100
    labels[3, 1:] = -100  # this block scores nothing (label 0 is never scored anyway)
    return input_ids, labels


def reference(model, input_ids, labels, teacher=None) -> dict[str, float]:
    """Plain-torch scores over the flattened scored positions, float64 reductions."""
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[:, :-1].float()  # (N, L-1, V)
        target = labels[:, 1:]  # (N, L-1)
        mask = target != -100
        ce = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=-100)
        result = {"loss": ce.item(), "tokens": int(mask.sum())}
        if teacher is not None:
            teacher_logits = teacher(input_ids=input_ids).logits[:, :-1].float()
            student_logprobs = F.log_softmax(logits[mask].double(), -1)
            teacher_logprobs = F.log_softmax(teacher_logits[mask].double(), -1)
            kl = F.kl_div(
                student_logprobs, teacher_logprobs, reduction="batchmean", log_target=True
            )
            agree = logits[mask].argmax(-1) == teacher_logits[mask].argmax(-1)
            result.update(kl=kl.item(), top1=agree.double().mean().item())
    return result


def test_perplexity_is_exp_of_cross_entropy(blocks):
    input_ids, labels = blocks
    model = tiny_llama(1)
    scores = score_models({"m": model}, input_ids, labels, teacher=None, batch_size=2)["m"]
    expected = reference(model, input_ids, labels)
    assert scores.tokens == expected["tokens"] == 9 + 15 + 12 + 0 + 15
    assert scores.loss == pytest.approx(expected["loss"], rel=1e-5)
    assert scores.perplexity == pytest.approx(math.exp(expected["loss"]), rel=1e-5)
    assert scores.top1 is None and scores.kl is None


def test_minus_100_positions_do_not_count(blocks):
    input_ids, labels = blocks
    model = tiny_llama(1)
    changed = input_ids.clone()
    changed[0, 11:] = (changed[0, 11:] + 1) % VOCAB  # tokens after the last scored one
    before = score_models({"m": model}, input_ids, labels, teacher=None)["m"]
    after = score_models({"m": model}, changed, labels, teacher=None)["m"]
    assert after.loss == pytest.approx(before.loss, rel=1e-6)

    nothing = torch.full_like(labels, -100)
    empty = score_models({"m": model}, input_ids, nothing, teacher=None)["m"]
    assert empty.tokens == 0 and math.isnan(empty.loss)


def test_batch_size_does_not_change_scores(blocks):
    input_ids, labels = blocks
    models = {"teacher": tiny_llama(1), "student": tiny_llama(2)}
    one = score_models(models, input_ids, labels, teacher="teacher", batch_size=1)
    all_ = score_models(models, input_ids, labels, teacher="teacher", batch_size=8)
    for name in models:
        assert one[name].loss == pytest.approx(all_[name].loss, rel=1e-5)
    assert one["student"].kl == pytest.approx(all_["student"].kl, rel=1e-5)
    assert one["student"].top1 == all_["student"].top1


def test_model_against_itself_agrees_fully(blocks):
    input_ids, labels = blocks
    model = tiny_llama(1)
    scores = score_models({"teacher": model, "copy": model}, input_ids, labels, teacher="teacher")
    assert scores["copy"].top1 == 1.0
    assert scores["copy"].kl == pytest.approx(0.0, abs=1e-6)
    assert scores["teacher"].top1 is None and scores["teacher"].kl is None
    assert scores["copy"].loss == pytest.approx(scores["teacher"].loss, rel=1e-6)


def test_agreement_matches_reference(blocks):
    input_ids, labels = blocks
    teacher, student = tiny_llama(1), tiny_llama(2)
    scores = score_models(
        {"student": student, "teacher": teacher}, input_ids, labels, teacher="teacher"
    )
    expected = reference(student, input_ids, labels, teacher=teacher)
    assert scores["student"].kl == pytest.approx(expected["kl"], rel=1e-4)
    assert scores["student"].kl > 0
    assert scores["student"].top1 == pytest.approx(expected["top1"], abs=1e-12)


def test_each_model_runs_once_per_batch(blocks):
    input_ids, labels = blocks
    models = {"teacher": tiny_llama(1), "student": tiny_llama(2), "baseline": tiny_llama(3)}
    calls = dict.fromkeys(models, 0)
    for name, model in models.items():
        model.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    done = []
    score_models(models, input_ids, labels, teacher="teacher", batch_size=2, progress=done.append)
    assert calls == {"teacher": 3, "student": 3, "baseline": 3}
    assert done == [2, 4, 5]


def test_modes_are_restored(blocks):
    input_ids, labels = blocks
    training, evaluating = tiny_llama(1).train(), tiny_llama(2).eval()
    seen = []
    training.register_forward_hook(lambda module, *_: seen.append(module.training))
    score_models({"a": training, "b": evaluating}, input_ids, labels, teacher="a")
    assert seen and not any(seen)
    assert training.training and not evaluating.training


def test_user_errors(blocks):
    input_ids, labels = blocks
    with pytest.raises(PotstillError, match="teacher"):
        score_models({"m": tiny_llama(1)}, input_ids, labels, teacher="nope")
    models = {"teacher": tiny_llama(1), "other": tiny_llama(2, vocab_size=VOCAB + 8)}
    with pytest.raises(PotstillError, match="vocab mismatch"):
        score_models(models, input_ids, labels, teacher="teacher")


def test_count_params():
    assert count_params(torch.nn.Linear(3, 4)) == 3 * 4 + 4
    model = tiny_llama(1)
    assert count_params(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside peft, not here
def test_count_params_with_lora_adapter():
    peft = pytest.importorskip("peft")
    base = tiny_llama(1)
    before = count_params(base)
    lora = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4)
    wrapped = peft.get_peft_model(base, lora)
    # Per layer: q_proj A (2×32) + B (32×2), v_proj A (2×32) + B (16×2).
    per_layer = (2 * 32 + 32 * 2) + (2 * 32 + 16 * 2)
    assert count_params(wrapped) == before + 2 * per_layer


def test_size_on_disk(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "extra.bin").write_bytes(b"x" * 200)
    (tmp_path / "model.gguf").write_bytes(b"x" * 30)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 5000)
    (tmp_path / "training_args.bin").write_bytes(b"x" * 7)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "old.safetensors").write_bytes(b"x" * 9)
    assert size_on_disk(tmp_path) == 1230
    assert size_on_disk(tmp_path / "tokenizer.json") == 5000
    with pytest.raises(PotstillError, match="no model"):
        size_on_disk(tmp_path / "missing")
