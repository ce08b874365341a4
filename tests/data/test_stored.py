"""A corpus packed to disk once (`load_data(store=...)`, `potstill.data.packed`) and read a
batch at a time (`StoredBlocks`): the same blocks, split and fingerprint as packing in
memory, reused while nothing changed, packed again when something did."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import potstill.data as data_module
from potstill.config import DataConfig
from potstill.data import StoredBlocks, load_data
from potstill.data import packed as build_module
from potstill.data import stored as stored_module
from potstill.data.packing import TokenizedDoc, pack
from potstill.data.stored import BlockWriter
from tests.data.test_packing import documents, write_jsonl


def _same(a, b) -> None:
    """Two loads hold the same blocks, split and fingerprint."""
    assert (a.fingerprint, a.split, a.name, a.kind) == (b.fingerprint, b.split, b.name, b.kind)
    assert len(a.train) == len(b.train) and a.train.num_tokens == b.train.num_tokens
    every = torch.arange(len(a.train))
    for x, y in ((a.train.batch(every), b.train.batch(every)), (a.heldout, b.heldout)):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)


def _datasets(tmp_path):
    """Three sources, one per way of holding out: documents, one document, examples."""
    text = " ".join(documents(30))
    (tmp_path / "book.txt").write_text(text)
    rows = [{"prompt": f"Question {i}: the capital?", "response": " Paris."} for i in range(30)]
    return {
        "documents": write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in documents(40)]),
        "one document": str(tmp_path / "book.txt"),
        "examples": write_jsonl(tmp_path / "qa.jsonl", rows),
    }


@pytest.mark.parametrize("which", ["documents", "one document", "examples"])
def test_a_stored_corpus_is_the_in_memory_one(tmp_path, tokenizer, which):
    cfg = DataConfig(path=_datasets(tmp_path)[which], block_size=8, heldout=0.1)
    in_memory = load_data(cfg, tokenizer)
    stored = load_data(cfg, tokenizer, store=tmp_path / "data")
    assert isinstance(stored.train, StoredBlocks)
    _same(stored, in_memory)
    assert not (tmp_path / "data" / build_module.TOKENS_FILE).exists()  # only blocks kept


def test_the_fingerprint_is_the_one_caches_were_taught_under(tmp_path, tokenizer):
    """An independent sha256 of what the fingerprint always hashed (settings, vocabulary,
    texts, the packed int64 tensors): caches taught before blocks were stored stay valid."""
    texts = documents(40)
    cfg = DataConfig(path=write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts]))
    cfg = cfg.model_copy(update={"block_size": 8})
    data = load_data(cfg, tokenizer, store=tmp_path / "data")
    digest = hashlib.sha256()
    settings = {
        "version": 1,
        "kind": "text",
        "block_size": 8,
        "heldout": cfg.heldout,
        "max_heldout_tokens": cfg.max_heldout_tokens,
        "seed": cfg.seed,
        "heldout_split": None,
        "eos": tokenizer.eos_token_id,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for group in (texts, []):
        digest.update(b"\x00group")
        for text in group:
            digest.update(len(text.encode()).to_bytes(8, "little") + text.encode())
    train = data.train.batch(torch.arange(len(data.train)))
    for tensor in (train.input_ids, train.labels, data.heldout.input_ids, data.heldout.labels):
        digest.update(tensor.numpy().astype(np.int64).tobytes())
    assert data.fingerprint == digest.hexdigest()


def test_a_second_load_reads_the_store_without_tokenizing(tmp_path, tokenizer, monkeypatch):
    cfg = DataConfig(path=_datasets(tmp_path)["documents"], block_size=8)
    first = load_data(cfg, tokenizer, store=tmp_path / "data")

    def refuse(*args, **kwargs):
        raise AssertionError("packed again")

    monkeypatch.setattr(data_module, "build", refuse)
    _same(load_data(cfg, tokenizer, store=tmp_path / "data"), first)


@pytest.mark.parametrize(
    "change", ["text", "settings", "damaged ids", "short labels", "damaged meta"]
)
def test_a_change_or_damage_packs_again(tmp_path, tokenizer, change):
    path = _datasets(tmp_path)["documents"]
    cfg = DataConfig(path=path, block_size=8)
    store = tmp_path / "data"
    load_data(cfg, tokenizer, store=store)
    if change == "text":
        with open(path, "a") as f:
            f.write(json.dumps({"text": "a new document about the winter of fortune"}) + "\n")
    elif change == "settings":
        cfg = cfg.model_copy(update={"block_size": 16})
    elif change == "damaged ids":
        raw = bytearray((store / stored_module.IDS_FILE).read_bytes())
        raw[5] ^= 0xFF
        (store / stored_module.IDS_FILE).write_bytes(bytes(raw))
    elif change == "short labels":
        raw = (store / stored_module.LABELS_FILE).read_bytes()
        (store / stored_module.LABELS_FILE).write_bytes(raw[:-4])
    else:
        (store / build_module.META_FILE).write_text("{not json")
    _same(load_data(cfg, tokenizer, store=store), load_data(cfg, tokenizer))


def test_small_chunks_pack_the_same_blocks(tmp_path, tokenizer, monkeypatch):
    """Tokenizing a few characters and writing a few rows at a time changes nothing."""
    cfg = DataConfig(path=_datasets(tmp_path)["documents"], block_size=8)
    whole = load_data(cfg, tokenizer)
    monkeypatch.setattr(build_module, "_CHUNK_CHARS", 50)
    monkeypatch.setattr(stored_module, "_CHUNK_ROWS", 2)
    _same(load_data(cfg, tokenizer, store=tmp_path / "data"), whole)


def test_the_writer_cuts_as_pack_does(tmp_path, monkeypatch):
    """Masked prompts, a block with no label (dropped), a partial last block (dropped)."""
    monkeypatch.setattr(stored_module, "_CHUNK_ROWS", 1)
    rng = np.random.default_rng(0)
    docs = [
        TokenizedDoc(rng.integers(0, 50, size=n).astype(np.int32), num_masked=m)
        for n, m in [(7, 0), (12, 10), (3, 3), (9, 2), (20, 19), (5, 0)]
    ]
    writer = BlockWriter(tmp_path, block_size=4)
    for d in docs:
        writer.add(d)
    rows = writer.close()
    expected = pack(docs, 4)
    got = StoredBlocks(tmp_path, rows, 4, writer.tokens)
    assert rows == len(expected) and writer.tokens == expected.num_tokens
    assert torch.equal(got.in_memory().input_ids, expected.input_ids)
    assert torch.equal(got.in_memory().labels, expected.labels)
    index = torch.tensor([rows - 1, 0, 2])
    assert torch.equal(got.batch(index).labels, expected.batch(index).labels)
    chunks = list(got.chunks(rows=2))
    assert torch.equal(torch.cat([ids for ids, _ in chunks]), expected.input_ids)


def test_stored_blocks_check_their_arguments(tmp_path):
    writer = BlockWriter(tmp_path, block_size=4)
    writer.add(TokenizedDoc(np.arange(12, dtype=np.int32)))
    rows = writer.close()
    blocks = StoredBlocks(tmp_path, rows, 4)
    with pytest.raises(ValueError, match=r"\(B,\) long"):
        blocks.batch(torch.tensor([0], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\(B,\) long"):
        blocks.batch(torch.tensor([[0]]))
    with pytest.raises(IndexError, match="out of range"):
        blocks.batch(torch.tensor([rows]))
    with pytest.raises(ValueError, match="not 4 rows"):
        StoredBlocks(tmp_path, rows + 1, 4)
    with pytest.raises(ValueError, match="block_size"):
        BlockWriter(tmp_path / "x", block_size=0)
