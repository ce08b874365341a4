"""Two vocabularies matched by their tokens' bytes (`potstill.data.vocab`)."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from potstill.data.vocab import NO_ID, shared_ids, token_bytes
from potstill.util.errors import PotstillError
from tests.conftest import make_tokenizer


@pytest.fixture(scope="module")
def coarse():
    return make_tokenizer(300)


@pytest.fixture(scope="module")
def fine():
    return make_tokenizer(120)


def sentencepiece(tokens: list[str]) -> PreTrainedTokenizerFast:
    """A sentencepiece-style tokenizer (▁ for a space, byte fallback) of these tokens."""
    vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(tokens)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_byte_level_tokens_match_by_their_strings(coarse, fine):
    mapping = shared_ids(coarse, fine, len(coarse))
    fine_ids = fine.get_vocab()
    special = set(coarse.all_special_ids)
    for token, i in coarse.get_vocab().items():
        # Both byte-level over GPT-2's alphabet: equal token strings are equal bytes.
        want = NO_ID if i in special else fine_ids.get(token, NO_ID)
        assert mapping[i] == want, token
    matched = mapping[mapping != NO_ID]
    assert len(matched) == len(np.unique(matched)) > 100  # one to one, and most of `fine`
    for i in np.flatnonzero(mapping != NO_ID)[:50]:
        assert coarse.decode([int(i)]) == fine.decode([int(mapping[i])])


def test_special_tokens_and_padding_rows_have_no_student_id(coarse, fine):
    rows = len(coarse) + 7  # an output layer padded past the tokenizer
    mapping = shared_ids(coarse, fine, rows)
    assert mapping.shape == (rows,) and mapping.dtype == np.int64
    assert (mapping[len(coarse) :] == NO_ID).all()
    assert mapping[coarse.convert_tokens_to_ids("<eos>")] == NO_ID
    assert (shared_ids(coarse, coarse, len(coarse))[: len(coarse)] >= 0).sum() == len(coarse) - 1


def test_sentencepiece_tokens_are_read_as_bytes_and_match_byte_level_ones(coarse):
    sp = sentencepiece(["▁the", "▁be", "<0x0A>", "é", "to"])
    got = token_bytes(sp)
    assert got[0] is None  # <unk>, a special token
    assert got[1:] == [b" the", b" be", b"\n", "é".encode(), b"to"]
    mapping = shared_ids(sp, coarse, len(sp))
    matched = 0
    for i, text in ((1, " the"), (2, " be"), (3, "\n"), (4, "é"), (5, "to")):
        ids = coarse.encode(text, add_special_tokens=False)
        assert mapping[i] == (ids[0] if len(ids) == 1 else NO_ID), text
        matched += len(ids) == 1
    assert matched >= 3 and mapping[0] == NO_ID


def test_what_cannot_be_read_is_refused(coarse):
    wordpiece = Tokenizer(models.WordPiece(vocab={"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    wordpiece.decoder = decoders.WordPiece()
    bert_like = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]")
    with pytest.raises(PotstillError, match=r"decoder WordPiece.*loss: uld"):
        token_bytes(bert_like)
    with pytest.raises(PotstillError, match="not a fast tokenizer"):
        token_bytes(object())
    with pytest.raises(ValueError, match="teacher_rows"):
        shared_ids(coarse, coarse, 0)
