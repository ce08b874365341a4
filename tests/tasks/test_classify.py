import random

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from potstill.data.examples import ClassExamples
from potstill.losses import LossTerm
from potstill.models.classifier import wrap_classifier_adapter
from potstill.tasks.classify import Classify
from potstill.teachers.labels import SoftLabels
from potstill.train.loop import train
from potstill.train.settings import TrainConfig
from tests.conftest import make_tokenizer

HINTON = [
    LossTerm(loss="forward_kl", weight=0.7, temperature=2.0),
    LossTerm(loss="cross_entropy", weight=0.3),
]
WORDS = (["sleep", "dream", "die", "death"], ["arms", "sea", "troubles", "fortune"])


def tiny_bert(tokenizer, num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    """A 2-layer BERT classifier, no dropout (so training-mode outputs are deterministic)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertForSequenceClassification(config)


def toy_task(n: int = 16, seed: int = 0):
    """Separable texts (each class draws its words from its own list), uneven lengths,
    gold labels and soft labels that lean towards the gold class."""
    rng = random.Random(seed)
    texts, gold = [], []
    for i in range(n):
        label = i % 2
        texts.append(" ".join(rng.choice(WORDS[label]) for _ in range(rng.randint(2, 6))))
        gold.append(label)
    gold = torch.tensor(gold)
    soft = torch.where(gold[:, None] == torch.arange(2), 0.8, 0.2)  # (N, 2)
    return texts, gold, soft


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def examples(tokenizer):
    texts, gold, soft = toy_task()
    return ClassExamples(tokenizer, texts, gold, soft_labels=soft)


def test_request_asks_for_distributions_only_with_a_kd_term():
    assert Classify(HINTON).request.distributions
    assert Classify([LossTerm("cross_entropy")]).request.empty


def test_loss_equals_a_float64_hand_computation(tokenizer, examples):
    model = tiny_bert(tokenizer).eval()
    teacher = SoftLabels.from_probs(examples.soft_labels)
    task = Classify(HINTON)
    batch = examples.batch(torch.tensor([0, 3, 5, 6]))
    outputs = teacher.outputs(batch, task.request)
    loss, parts = task.loss(model, batch, outputs, num_tokens=task.count(batch))

    with torch.no_grad():
        s = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long())
    s = s.logits.double()  # (B, C)
    t = examples.soft_labels[batch.index].double().log()  # (B, C)
    temperature = 2.0
    p = torch.softmax(t / temperature, -1)
    kl = (p * (p.log() - torch.log_softmax(s / temperature, -1))).sum(-1)  # (B,)
    ce = -torch.log_softmax(s, -1).gather(1, batch.targets[:, None]).squeeze(1)  # (B,)
    expected = (0.7 * temperature**2 * kl + 0.3 * ce).mean()
    assert task.count(batch) == 4
    torch.testing.assert_close(loss.double(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(parts["cross_entropy"].double(), ce.mean(), atol=1e-6, rtol=1e-5)
    loss.backward()  # the graph reaches the student
    assert model.classifier.weight.grad is not None


def _train(model, examples, tmp_path, **cfg):
    config = TrainConfig(**{"steps": 30, "batch_size": 4, "warmup": 2, "lr": 3e-3, **cfg})
    return train(
        model,
        examples,
        Classify(HINTON),
        config,
        teacher=SoftLabels.from_probs(examples.soft_labels),
        name="student",
        checkpoint_dir=tmp_path / "ckpt",
        metrics_path=tmp_path / "metrics.jsonl",
    )


def _accuracy(model, examples) -> float:
    batch = examples.batch(torch.arange(len(examples)))
    with torch.no_grad():
        logits = model.eval()(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()
        ).logits
    return float((logits.argmax(-1) == batch.targets).float().mean())


def test_training_on_soft_labels_learns_a_separable_task(tokenizer, examples, tmp_path, one_thread):
    model = tiny_bert(tokenizer)
    before = _accuracy(model, examples)
    result = _train(model, examples, tmp_path)
    after = _accuracy(model, examples)
    assert result.steps == 30 and result.tokens == 30 * 4  # examples, not tokens
    assert before < 0.9 and after > 0.9, (before, after)


def test_gradient_accumulation_is_exact(tokenizer, examples, tmp_path, optimizer_grads, one_thread):
    """One step of 4 examples, or 2 micro-batches of 2 (padded to other widths): the same
    gradient."""
    _train(tiny_bert(tokenizer), examples, tmp_path / "a", steps=1, clip=None)
    _train(
        tiny_bert(tokenizer),
        examples,
        tmp_path / "b",
        steps=1,
        batch_size=2,
        grad_accum=2,
        clip=None,
    )
    whole, split = optimizer_grads
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("adapter", ["lora", "pissa"])
def test_adapter_students_train_through_the_loop(
    tokenizer, examples, tmp_path, adapter, one_thread
):
    model = wrap_classifier_adapter(tiny_bert(tokenizer), adapter, r=4, alpha=8)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    _train(model, examples, tmp_path, steps=3)
    assert (tmp_path / "ckpt" / "state.json").is_file()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
