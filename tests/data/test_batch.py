"""`Batch`: token ids, mask, labels and block index, checked at construction."""

from __future__ import annotations

import pytest
import torch

from potstill.data.batch import Batch

IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
LABELS = torch.tensor([[-100, 6, 7, 8], [-100, -100, 11, -100]])
INDEX = torch.tensor([3, 0])


def test_without_a_mask_every_token_is_real():
    batch = Batch.of(IDS, LABELS, INDEX)
    assert batch.attention_mask.dtype == torch.bool and bool(batch.attention_mask.all())
    assert batch.packed
    assert batch.num_labels == 4  # 3 + 1 labels that are not -100


def test_a_padded_batch_is_not_packed():
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    batch = Batch.of(IDS, LABELS, INDEX, attention_mask=mask)
    assert not batch.packed and batch.num_labels == 4
    assert torch.equal(batch.attention_mask, mask)


def test_to_keeps_every_field():
    batch = Batch.of(IDS, LABELS, INDEX).to("cpu")
    assert torch.equal(batch.input_ids, IDS) and torch.equal(batch.labels, LABELS)
    assert torch.equal(batch.index, INDEX) and batch.packed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # labels given as a loss mask instead of token ids
        (
            {"labels": LABELS != -100},
            r"labels must be \(B, L\) = \(2, 4\) long, got \(2, 4\) torch.bool",
        ),
        ({"labels": LABELS[:, 1:]}, r"labels must be \(B, L\) = \(2, 4\) long, got \(2, 3\)"),
        ({"input_ids": IDS.int()}, r"input_ids must be \(B, L\) long, got \(2, 4\) torch.int32"),
        ({"input_ids": IDS[0]}, r"input_ids must be \(B, L\) long, got \(4,\)"),
        ({"attention_mask": torch.ones(2, 4, dtype=torch.long)}, r"attention_mask must be .* bool"),
        ({"attention_mask": torch.ones(2, 3, dtype=torch.bool)}, r"attention_mask .* got \(2, 3\)"),
        ({"index": INDEX[:, None]}, r"index must be \(B,\) = \(2,\), got \(2, 1\)"),
        ({"index": torch.tensor([0])}, r"index must be \(B,\) = \(2,\), got \(1,\)"),
    ],
)
def test_wrong_dtypes_and_shapes_are_refused(kwargs, message):
    fields = {
        "input_ids": IDS,
        "attention_mask": torch.ones(2, 4, dtype=torch.bool),
        "labels": LABELS,
        "index": INDEX,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        Batch(**fields)
