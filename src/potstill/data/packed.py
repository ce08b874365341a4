"""Tokenize a source's documents and pack them into a folder, a bounded chunk at a time.

`build` reads the documents once, in order (a `stream.StreamedSource` reads them from the
files as it goes), writes every document's tokens to ``tokens.bin`` as the tokenizer gives
them (chunks of about `_CHUNK_CHARS` characters), chooses the held-out documents from their
lengths alone, then packs the training documents into `StoredBlocks` files with
`BlockWriter` and the held-out ones into ``heldout.safetensors``. So the tokens of the
corpus are never all in memory: only a chunk of them, the held-out blocks and one
integer per document. The fingerprint is the sha256 `LMData.fingerprint` always was
(settings, vocabulary, texts, then the packed tensors as int64), computed as the bytes go
by: a cache taught before this module keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file

from potstill.data.packing import (
    Blocks,
    TokenizedDoc,
    cap_blocks,
    choose_heldout,
    eos_id,
    heldout_block_count,
    pack,
    tokenize_chat_examples,
    tokenize_examples,
    tokenize_texts,
)
from potstill.data.settings import DataConfig
from potstill.data.sources import Document, Source
from potstill.data.stored import BlockWriter, StoredBlocks
from potstill.data.stream import StreamedSource
from potstill.util.errors import PotstillError

FINGERPRINT_VERSION = 1
TOKENS_FILE = "tokens.bin"
HELDOUT_FILE = "heldout.safetensors"
META_FILE = "data.json"
_CHUNK_CHARS = 4_000_000


@dataclass
class Built:
    """What `build` wrote: the training rows, held-out blocks and how they were chosen."""

    train_blocks: int
    train_tokens: int
    heldout: Blocks
    fingerprint: str
    split: str


class _Tokens:
    """Every document's tokens in one int32 file, with their offsets and masked counts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by done()
        self.starts = array("q")
        self.lengths = array("q")
        self.masked = array("q")
        self._end = 0
        self._fd: int | None = None

    def extend(self, docs: Iterable[TokenizedDoc]) -> None:
        for doc in docs:
            self._file.write(np.ascontiguousarray(doc.ids, dtype=np.int32).tobytes())
            self.starts.append(self._end)
            self.lengths.append(len(doc.ids))
            self.masked.append(doc.num_masked)
            self._end += len(doc.ids)

    def done(self) -> None:
        self._file.close()
        self._fd = os.open(self.path, os.O_RDONLY)

    def doc(self, i: int) -> TokenizedDoc:
        assert self._fd is not None, "done() first"
        raw = os.pread(self._fd, self.lengths[i] * 4, self.starts[i] * 4)
        return TokenizedDoc(np.frombuffer(raw, dtype=np.int32).copy(), self.masked[i])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self.path.unlink(missing_ok=True)


def build(folder: Path, source: Source | StreamedSource, cfg: DataConfig, tokenizer: Any) -> Built:
    """Tokenize and pack ``source`` into ``folder`` (see the module's docstring). Its
    documents are read once, in order: a `StreamedSource` reads them from its files as
    they are tokenized."""
    digest = hashlib.sha256()
    digest.update(json.dumps(_settings(cfg, tokenizer, source), sort_keys=True).encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    _tokenize(source.kind, tokenizer, [], cfg)  # refuses a kind the settings cannot take
    tokens = _Tokens(folder / TOKENS_FILE)
    try:
        n_train = _tokenize_into(tokens, source, source.documents, tokenizer, cfg, digest)
        n_held = None
        if source.heldout is not None:
            n_held = _tokenize_into(tokens, source, source.heldout, tokenizer, cfg, digest)
        else:
            digest.update(b"\x00group")  # the fingerprint hashes an empty held-out group
        tokens.done()
        train, heldout, split = _split(folder, tokens, n_train, n_held, cfg, source)
        if len(train) == 0 or len(heldout) == 0:
            unit = "documents" if source.kind == "text" else "examples"
            count = len(tokens.lengths)
            raise PotstillError(
                f"data {source.name}: found {sum(tokens.lengths)} tokens in "
                f"{_plural(count, unit)}, which make {len(train)} train and {len(heldout)} "
                f"held-out blocks of data.block_size={cfg.block_size}; at least one of each "
                f"is needed ({2 * cfg.block_size}+ tokens): add more text or set a smaller "
                "data.block_size"
            )
    finally:
        tokens.close()
    heldout = cap_blocks(heldout, cfg.max_heldout_tokens)
    for part in (0, 1):  # train ids, then train labels, as the in-memory fingerprint did
        for chunk in train.chunks():
            digest.update(chunk[part].numpy().tobytes())
    for tensor in (heldout.input_ids, heldout.labels):
        digest.update(tensor.numpy().tobytes())
    save_file(
        {"input_ids": heldout.input_ids.contiguous(), "labels": heldout.labels.contiguous()},
        str(folder / HELDOUT_FILE),
    )
    return Built(len(train), train.num_tokens, heldout, digest.hexdigest(), split)


def _tokenize_into(
    tokens: _Tokens,
    source: Source | StreamedSource,
    documents: Iterable[Document],
    tokenizer: Any,
    cfg: DataConfig,
    digest: Any,
) -> int:
    """Hash the group's texts and tokenize its non-empty documents into ``tokens`` a chunk
    at a time; returns how many documents it added."""
    digest.update(b"\x00group")
    before = len(tokens.lengths)
    chunk: list[Document] = []
    chars = 0
    for doc in documents:
        texts = (doc,) if isinstance(doc, str) else doc
        for text in texts:
            data = text.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        if isinstance(doc, str) and not doc.strip():
            continue  # a blank line in a file is no document; examples are kept whole
        chunk.append(doc)
        chars += sum(len(t) for t in texts)
        if chars >= _CHUNK_CHARS:
            tokens.extend(_tokenize(source.kind, tokenizer, chunk, cfg))
            chunk, chars = [], 0
    if chunk:
        tokens.extend(_tokenize(source.kind, tokenizer, chunk, cfg))
    return len(tokens.lengths) - before


def _split(
    folder: Path,
    tokens: _Tokens,
    n_train: int,
    n_held: int | None,
    cfg: DataConfig,
    source: Source | StreamedSource,
) -> tuple[StoredBlocks, Blocks, str]:
    """Pack train (to disk) and held-out (in memory) separately; returns them and a
    one-line description of the split."""
    bs, cap = cfg.block_size, cfg.max_heldout_tokens
    unit = "documents" if source.kind == "text" else "examples"
    lengths = tokens.lengths[:n_train]
    total = sum(lengths)
    held_set: set[int] = set()  # training documents held out
    if n_held is not None:  # the data's own split
        heldout = pack([tokens.doc(n_train + i) for i in range(n_held)], bs)
        capped = cap is not None and len(heldout) * bs > cap
        split = f"held-out: the dataset's '{source.heldout_split}' split, {_plural(n_held, unit)}"
    elif n_train >= 2:
        min_tokens = bs
        while True:  # grow the held-out set until it packs into a block with a label
            chosen = choose_heldout(lengths, cfg.heldout, cfg.seed, min_tokens, cap)
            heldout = pack([tokens.doc(i) for i in chosen], bs)
            if len(heldout) or min_tokens >= total:
                break
            min_tokens *= 2
        held_set = set(chosen)
        share = sum(lengths[i] for i in chosen) / total
        capped = cap is not None and cfg.heldout * total > cap
        split = f"held-out: {len(chosen)} of {n_train} {unit} ({share:.1%} of tokens)"
    writer = BlockWriter(folder, bs)
    for i in range(n_train):
        if i not in held_set:
            writer.add(tokens.doc(i))
    rows = writer.close()
    train = StoredBlocks(folder, rows, bs, writer.tokens)
    if n_held is None and n_train < 2:  # one document: its last blocks are held out
        max_blocks = None if cap is None else max(1, cap // bs)
        cut = rows - heldout_block_count(rows, cfg.heldout, max_blocks)
        heldout = train.rows(cut, rows)
        train = StoredBlocks(folder, cut, bs)
        capped = max_blocks is not None and math.ceil(cfg.heldout * rows) > max_blocks
        split = f"held-out: the last {len(heldout)} of {rows} blocks of the one {unit[:-1]}"
    if capped:
        split += f", capped at {cap} tokens"
    return train, heldout, split


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit if n != 1 else unit.removesuffix('s')}"


def _tokenize(
    kind: str, tokenizer: Any, documents: list[Document], cfg: DataConfig
) -> list[TokenizedDoc]:
    if kind == "text":
        if cfg.chat_template:
            raise PotstillError(
                "data.chat_template is true but the data holds plain text, not "
                "prompt/response rows; set data.chat_template=false or point data.path at "
                "prompt/response rows (data.prompt_field / data.response_field)"
            )
        return tokenize_texts(tokenizer, documents)  # type: ignore[arg-type]
    if cfg.chat_template:
        return tokenize_chat_examples(tokenizer, documents, cfg.system)  # type: ignore[arg-type]
    return tokenize_examples(tokenizer, documents)  # type: ignore[arg-type]


def _settings(cfg: DataConfig, tokenizer: Any, source: Source | StreamedSource) -> dict[str, Any]:
    """The settings the fingerprint hashes first (a key is added only when it is set, so
    older fingerprints, and the caches that name them, stay valid)."""
    settings: dict[str, Any] = {
        "version": FINGERPRINT_VERSION,
        "kind": source.kind,
        "block_size": cfg.block_size,
        "heldout": cfg.heldout,
        "max_heldout_tokens": cfg.max_heldout_tokens,
        "seed": cfg.seed,
        "heldout_split": source.heldout_split,
        "eos": eos_id(tokenizer),
    }
    if cfg.chat_template:
        settings["chat_template"] = True
        settings["system"] = cfg.system
    return settings
