"""Tokenizing, packing, prompt masking and the held-out split, end to end via load_data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from potstill.config import DataConfig
from potstill.data import Blocks, load_data
from potstill.data.packing import (
    TokenizedDoc,
    cap_blocks,
    choose_heldout,
    encode,
    pack,
    split_blocks,
    tokenize_chat_examples,
    tokenize_examples,
    tokenize_texts,
)
from potstill.util.errors import PotstillError

SENTENCE = "the question of fortune and the winter of discontent is nobler in the mind"


def documents(n: int, length: int = 12) -> list[str]:
    """n distinct documents of varied length, each starting with its own number."""
    words = SENTENCE.split()
    return [
        f"[{i:03d}] " + " ".join(words[(i + j) % len(words)] for j in range(length + i % 5))
        for i in range(n)
    ]


def doc(ids: list[int], num_masked: int = 0) -> TokenizedDoc:
    return TokenizedDoc(np.array(ids, dtype=np.int32), num_masked)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def flat(blocks: Blocks) -> str:
    """The token stream of packed blocks, as a searchable string ",1,2,3,"."""
    return "," + ",".join(map(str, blocks.input_ids.flatten().tolist())) + ","


def test_encode_matches_the_tokenizer_call(tokenizer):
    texts = documents(5)
    assert list(encode(tokenizer, texts)) == tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_pack_concatenates_and_drops_the_partial_block():
    docs = [doc([1, 2, 3, 0]), doc([4, 5, 0]), doc([6, 7, 8, 9, 0])]
    blocks = pack(docs, block_size=4)
    assert blocks.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert blocks.input_ids.dtype == blocks.labels.dtype == torch.long
    assert torch.equal(blocks.input_ids, blocks.labels)
    assert len(pack(docs, block_size=5)) == 2  # 12 tokens: the last 2 are dropped


def test_prompt_tokens_and_only_they_are_masked(tokenizer):
    pairs = [("Question: what is the capital?", " Paris."), ("To be?", " Or not to be.")]
    docs = tokenize_examples(tokenizer, pairs)
    eos = tokenizer.eos_token_id
    ids, labels = [], []
    for prompt, response in pairs:  # an independent reconstruction
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"]
        ids += [*p, *r, eos]
        labels += [-100] * len(p) + [*r, eos]
    n = len(ids) // 8
    expected = [
        (ids[i : i + 8], labels[i : i + 8])
        for i in range(0, n * 8, 8)
        if any(label != -100 for label in labels[i : i + 8])  # all-prompt blocks are dropped
    ]
    blocks = pack(docs, block_size=8)
    assert blocks.input_ids.tolist() == [i for i, _ in expected]
    assert blocks.labels.tolist() == [label for _, label in expected]
    assert blocks.num_tokens == sum(x != -100 for _, label in expected for x in label)


CHAT = (
    "{% for m in messages %}<eos>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<eos>assistant\n{% endif %}"
)


def test_chat_examples_train_on_the_answer_and_its_end_of_turn_only(tokenizer):
    tokenizer.chat_template = CHAT
    try:
        (got,) = tokenize_chat_examples(tokenizer, [("To be?", "Or not to be.")])
    finally:
        tokenizer.chat_template = None
    head = "<eos>user\nTo be?<eos>\n<eos>assistant\n"
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer("Or not to be.<eos>\n", add_special_tokens=False)["input_ids"]
    assert got.ids.tolist() == head_ids + tail_ids and got.num_masked == len(head_ids)
    assert tokenizer.decode(got.ids[got.num_masked :].tolist()).startswith("Or not to be.")


def test_a_system_prompt_opens_every_chat_and_is_masked(tokenizer):
    tokenizer.chat_template = CHAT
    try:
        (got,) = tokenize_chat_examples(tokenizer, [("To be?", "Or not.")], system="Be brief.")
    finally:
        tokenizer.chat_template = None
    head = "<eos>system\nBe brief.<eos>\n<eos>user\nTo be?<eos>\n<eos>assistant\n"
    assert got.num_masked == len(tokenizer(head, add_special_tokens=False)["input_ids"])
    assert tokenizer.decode(got.ids[: got.num_masked].tolist()) == head


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"system": "Be brief."}, "needs data.chat_template"),
        ({"chat_template": True, "system": " "}, "is empty"),
    ],
)
def test_a_system_prompt_needs_chats_and_text(settings, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**settings)


def test_chat_examples_need_a_chat_template(tokenizer):
    with pytest.raises(PotstillError, match="has no chat template"):
        tokenize_chat_examples(tokenizer, [("q", "a")])


def test_blocks_with_no_trainable_token_are_dropped():
    docs = [doc([1] * 10 + [2, 0], num_masked=10)]
    blocks = pack(docs, block_size=4)
    assert blocks.input_ids.tolist() == [[1, 1, 2, 0]]  # [1, 1, 1, 1] twice: all prompt
    assert blocks.labels.tolist() == [[-100, -100, 2, 0]]
    assert blocks.num_tokens == 2


def test_choose_heldout_properties():
    lengths = [50, 80, 120, 30, 60, 90, 40, 70, 110, 20]
    total = sum(lengths)
    splits = {tuple(choose_heldout(lengths, 0.2, seed, min_tokens=8)) for seed in range(10)}
    assert len(splits) > 1  # the seed matters
    for seed in range(10):
        held = choose_heldout(lengths, 0.2, seed, min_tokens=8)
        assert held == choose_heldout(lengths, 0.2, seed, min_tokens=8)
        assert sum(lengths[i] for i in held) >= 0.2 * total
        assert 1 <= len(held) < len(lengths)
    assert choose_heldout([5, 5], 0.9, 0, min_tokens=1) in ([0], [1])  # never all


def test_choose_heldout_does_not_starve_training():
    # One file holds almost everything; whichever seed, it stays in training.
    for seed in range(10):
        assert choose_heldout([1000, 10, 10, 10], 0.05, seed, min_tokens=8) != [0]
        assert 0 not in choose_heldout([1000, 10, 10, 10], 0.05, seed, min_tokens=8)


def test_split_blocks_holds_out_the_last_blocks():
    blocks = Blocks(torch.arange(40).view(10, 4), torch.arange(40).view(10, 4))
    train, heldout = split_blocks(blocks, 0.25)
    assert (len(train), len(heldout)) == (7, 3)  # ceil(0.25 × 10)
    assert torch.equal(torch.cat([train.input_ids, heldout.input_ids]), blocks.input_ids)


def test_cap_keeps_the_first_blocks():
    blocks = Blocks(torch.arange(40).view(10, 4), torch.arange(40).view(10, 4))
    assert torch.equal(cap_blocks(blocks, 9).input_ids, blocks.input_ids[:2])
    assert len(cap_blocks(blocks, 1)) == 1 and len(cap_blocks(blocks, None)) == 10


# --- load_data -----------------------------------------------------------------------------


def test_load_data_shapes_and_no_leakage(tmp_path, tokenizer):
    texts = documents(40)
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    data = load_data(DataConfig(path=path, block_size=16, heldout=0.1), tokenizer)
    assert (data.name, data.kind) == ("docs.jsonl", "text")
    for blocks in (data.train, data.heldout):
        assert blocks.input_ids.shape == blocks.labels.shape == (len(blocks), 16)
        assert torch.equal(blocks.input_ids, blocks.labels)
    train, heldout = flat(data.train), flat(data.heldout)
    in_train = in_heldout = 0
    for text in texts:
        head = tokenizer(text, add_special_tokens=False)["input_ids"][:8]  # "[007] the ..."
        head = "," + ",".join(map(str, head)) + ","
        assert not (head in train and head in heldout), f"{text!r} is in train and held-out"
        in_train += head in train
        in_heldout += head in heldout
    assert 1 <= in_heldout < in_train
    assert data.split.startswith("held-out: ") and "of 40 documents" in data.split


def test_split_is_deterministic_given_the_seed(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in documents(30)])
    one = load_data(DataConfig(path=path, block_size=8, seed=1), tokenizer)
    two = load_data(DataConfig(path=path, block_size=8, seed=1), tokenizer)
    assert torch.equal(one.heldout.input_ids, two.heldout.input_ids)
    assert one.fingerprint == two.fingerprint
    others = [load_data(DataConfig(path=path, block_size=8, seed=s), tokenizer) for s in range(6)]
    assert len({flat(d.heldout) for d in others}) > 1


def test_single_document_holds_out_its_last_blocks(tmp_path, tokenizer):
    text = " ".join(documents(20))
    (tmp_path / "book.txt").write_text(text)
    data = load_data(DataConfig(path=str(tmp_path / "book.txt"), block_size=8), tokenizer)
    whole = pack(tokenize_texts(tokenizer, [text]), 8)
    k = math.ceil(0.05 * len(whole))
    assert torch.equal(data.heldout.input_ids, whole.input_ids[-k:])
    assert torch.equal(data.train.input_ids, whole.input_ids[:-k])
    assert "last" in data.split


def test_heldout_is_capped_and_the_rest_trains(tmp_path, tokenizer):
    texts = documents(40)
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    data = load_data(
        DataConfig(path=path, block_size=8, heldout=0.3, max_heldout_tokens=20), tokenizer
    )
    assert len(data.heldout) == 2  # 20 // 8 blocks
    assert "capped at 20 tokens" in data.split
    # Only the documents the capped held-out needs leave training, not 30% of them.
    total = sum(len(t) for t in tokenizer(texts, add_special_tokens=False)["input_ids"]) + 40
    assert len(data.train) * 8 > 0.85 * total


def test_single_document_cap_holds_out_the_last_blocks(tmp_path, tokenizer):
    text = " ".join(documents(20))
    (tmp_path / "book.txt").write_text(text)
    cfg = DataConfig(path=str(tmp_path / "book.txt"), block_size=8, heldout=0.5)
    data = load_data(cfg.model_copy(update={"max_heldout_tokens": 16}), tokenizer)
    whole = pack(tokenize_texts(tokenizer, [text]), 8)
    assert torch.equal(data.heldout.input_ids, whole.input_ids[-2:])
    assert torch.equal(data.train.input_ids, whole.input_ids[:-2])
    assert "capped at 16 tokens" in data.split


def test_prompt_response_data_end_to_end(tmp_path, tokenizer):
    rows = [{"prompt": f"Question {i}: the capital?", "response": " Paris."} for i in range(20)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    data = load_data(DataConfig(path=path, block_size=8), tokenizer)
    assert data.kind == "prompt_response"
    for blocks in (data.train, data.heldout):
        masked = blocks.labels == -100
        assert masked.any() and (~masked).any()
        assert torch.equal(blocks.labels[~masked], blocks.input_ids[~masked])
    assert "of 20 examples" in data.split


def test_fingerprint_changes_with_each_input(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in documents(30)])
    base = DataConfig(path=path, block_size=8)
    prints = {load_data(base, tokenizer).fingerprint}
    for change in ({"block_size": 16}, {"heldout": 0.2}, {"seed": 3}):
        prints.add(load_data(base.model_copy(update=change), tokenizer).fingerprint)
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": t} for t in documents(31)])
    prints.add(load_data(base.model_copy(update={"path": other}), tokenizer).fingerprint)
    assert len(prints) == 5 and all(len(p) == 64 for p in prints)


def test_fingerprint_changes_with_the_vocab(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in documents(30)])
    cfg = DataConfig(path=path, block_size=8)
    before = load_data(cfg, tokenizer).fingerprint
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy
    other = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    other.add_tokens(["zebra"])
    assert load_data(cfg, other).fingerprint != before


def test_empty_file_is_an_error(tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(PotstillError, match=r"found 0 tokens.*data\.block_size"):
        load_data(DataConfig(path=str(tmp_path / "empty.txt")), tokenizer)


def test_too_small_data_says_what_is_needed(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "small.jsonl", [{"text": "To be."}, {"text": "Or not."}])
    with pytest.raises(PotstillError) as info:
        load_data(DataConfig(path=path, block_size=64), tokenizer)
    message = str(info.value)
    assert "tokens in 2 documents" in message and "128+ tokens" in message
    assert "smaller data.block_size" in message
