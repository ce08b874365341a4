import pytest
import torch

from potstill.data.examples import ClassBatch, ClassExamples
from potstill.util.errors import PotstillError
from tests.conftest import make_tokenizer

TEXTS = ["To be, or not to be", "To die", "To sleep: perchance to dream: ay, there's the rub."]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_batches_are_right_padded_with_a_mask(tokenizer):
    soft = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    examples = ClassExamples(tokenizer, TEXTS, [0, 1, 1], soft_labels=soft)
    lengths = [len(tokenizer(t)["input_ids"]) for t in TEXTS]
    batch = examples.batch(torch.tensor([2, 1]))

    assert isinstance(batch, ClassBatch) and len(examples) == 3 and examples.num_classes == 2
    width = max(lengths[2], lengths[1])
    assert batch.input_ids.shape == (2, width) and batch.input_ids.dtype == torch.long
    assert batch.attention_mask.dtype == torch.bool
    assert batch.attention_mask.sum(1).tolist() == [lengths[2], lengths[1]]
    assert (
        batch.attention_mask[1, : lengths[1]].all()
        and not batch.attention_mask[1, lengths[1] :].any()
    )
    assert (batch.input_ids[1, lengths[1] :] == tokenizer.pad_token_id).all()
    assert batch.input_ids[1, : lengths[1]].tolist() == tokenizer(TEXTS[1])["input_ids"]
    assert (batch.tokens.labels[~batch.attention_mask] == -100).all()
    assert batch.targets.tolist() == [1, 1] and batch.targets.dtype == torch.long
    assert batch.index.tolist() == [2, 1]
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids) and torch.equal(
        moved.targets, batch.targets
    )


def test_texts_are_truncated_to_max_length(tokenizer):
    examples = ClassExamples(tokenizer, TEXTS, [0, 1, 0], max_length=3)
    batch = examples.batch(torch.arange(3))
    assert batch.input_ids.shape[1] == 3
    assert examples.num_classes == 2


@pytest.mark.parametrize(
    ("texts", "labels", "soft", "message"),
    [
        (TEXTS, [0, 1], None, "one label per text"),
        (TEXTS, [0, 1, 2], torch.full((3, 2), 0.5), "outside 0..1"),
        (TEXTS, [0, -1, 1], None, "outside"),
        (["a", "", "b"], [0, 1, 0], None, "example 1 has no tokens"),
        (TEXTS, [0, 1, 0], torch.full((2, 2), 0.5), "soft labels must be"),
    ],
)
def test_bad_examples_are_refused_with_the_fix(tokenizer, texts, labels, soft, message):
    with pytest.raises(PotstillError, match=message):
        ClassExamples(tokenizer, texts, labels, soft_labels=soft)


def test_class_batch_checks_its_targets(tokenizer):
    batch = ClassExamples(tokenizer, TEXTS, [0, 1, 0]).batch(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="targets must be"):
        ClassBatch(batch.tokens, torch.tensor([0]))
