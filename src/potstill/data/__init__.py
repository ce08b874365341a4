"""Language-model data: read a user's text (or the shipped Shakespeare), tokenize, pack into
blocks, and hold out whole documents for evaluation.

``load_data(cfg, tokenizer, store=...)`` is the one entry point; see `sources` for the
formats read, `stream` for reading them a file (or a batch of rows) at a time, `packing`
for tokenizing, packing and the held-out split, `packed` for how a corpus is packed a
chunk at a time, `stored` for blocks read from disk, and `corpus` for the default corpus.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from potstill.data.corpus import SHAKESPEARE_SHA256, shakespeare_documents
from potstill.data.packed import FINGERPRINT_VERSION, HELDOUT_FILE, META_FILE, build
from potstill.data.packing import Blocks
from potstill.data.settings import DataConfig
from potstill.data.sources import Source
from potstill.data.stored import IDS_FILE, LABELS_FILE, StoredBlocks
from potstill.data.stream import StreamedSource, open_source
from potstill.util.io import (
    atomic_dir,
    atomic_write_text,
    locked_folder,
    settle_dir,
    sha256_file,
)

__all__ = ["Blocks", "LMData", "StoredBlocks", "load_data", "shakespeare_documents"]

STORE_VERSION = 1


@dataclass
class LMData:
    """Packed train and held-out blocks, and what they came from."""

    train: Blocks | StoredBlocks
    heldout: Blocks
    name: str  # "shakespeare", or the name of data.path
    fingerprint: str  # sha256 of the texts, tokenizer vocab, block_size, heldout, seed
    kind: str  # "text" or "prompt_response"
    split: str  # one line: how the held-out set was chosen


def load_data(cfg: DataConfig, tokenizer: Any, store: Path | None = None) -> LMData:
    """Read ``cfg.path`` (None: the shipped Shakespeare corpus), tokenize with ``tokenizer``
    (a fast HF tokenizer with an eos token) and pack into ``cfg.block_size`` blocks.

    The held-out set is whole documents chosen with ``cfg.seed`` until they hold
    ``cfg.heldout`` of the tokens (or, for a single document, its last blocks; or a
    datasets folder's own 'test'/'validation' split), capped at ``cfg.max_heldout_tokens``.
    Train and held-out are packed separately, so no block mixes the two.

    With ``store`` (a run's ``data/`` folder) the training blocks stay on disk there and
    are read as training visits them (`StoredBlocks`), so memory does not grow with the
    corpus; a later load whose data files, tokenizer and settings are unchanged (checked
    by their sha256) reads that folder without tokenizing again. Without it the blocks
    are packed in a temporary folder and returned in memory.
    """
    if store is None:
        return _load(cfg, tokenizer, None, None)
    key = _source_key(cfg, tokenizer)
    # One process packs; the others (the ranks of one launch) wait, then read its folder.
    with locked_folder(store.parent):
        kept = _open(store, key)
        return kept if kept is not None else _load(cfg, tokenizer, store, key)


def _load(cfg: DataConfig, tokenizer: Any, store: Path | None, key: str | None) -> LMData:
    source: Source | StreamedSource
    if cfg.path is None:
        source = Source("shakespeare", "text", [text for _, text in shakespeare_documents()])
    else:
        source = open_source(cfg.path, cfg)  # read from the files as it is packed
    if store is None:
        with tempfile.TemporaryDirectory(prefix="potstill-data-") as tmp:
            built = build(Path(tmp), source, cfg, tokenizer)
            train: Blocks | StoredBlocks = StoredBlocks(
                Path(tmp), built.train_blocks, cfg.block_size
            ).in_memory()
    else:
        with atomic_dir(store) as tmp:
            built = build(tmp, source, cfg, tokenizer)
            meta = {
                "version": STORE_VERSION,
                "key": key,
                "name": source.name,
                "kind": source.kind,
                "split": built.split,
                "fingerprint": built.fingerprint,
                "block_size": cfg.block_size,
                "train_blocks": built.train_blocks,
                "train_tokens": built.train_tokens,
                "sha256": {name: sha256_file(tmp / name) for name in _FILES},
            }
            atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")
        train = StoredBlocks(store, built.train_blocks, cfg.block_size, built.train_tokens)
    return LMData(
        train=train,
        heldout=built.heldout,
        name=source.name,
        fingerprint=built.fingerprint,
        kind=source.kind,
        split=built.split,
    )


_FILES = (IDS_FILE, LABELS_FILE, HELDOUT_FILE)


def _open(store: Path, key: str) -> LMData | None:
    """The data a store holds, when it was packed from the same inputs (``key``) and its
    files are whole; None when it must be packed (again)."""
    settle_dir(store)
    try:
        meta = json.loads((store / META_FILE).read_text())
        if meta.get("version") != STORE_VERSION or meta.get("key") != key:
            return None
        if any(sha256_file(store / n) != meta["sha256"][n] for n in _FILES):
            return None
        held = load_file(str(store / HELDOUT_FILE))
        train = StoredBlocks(store, meta["train_blocks"], meta["block_size"], meta["train_tokens"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return None  # missing, damaged or from another version: packed again
    return LMData(
        train=train,
        heldout=Blocks(held["input_ids"], held["labels"]),
        name=meta["name"],
        fingerprint=meta["fingerprint"],
        kind=meta["kind"],
        split=meta["split"],
    )


def _source_key(cfg: DataConfig, tokenizer: Any) -> str:
    """sha256 of everything a store's blocks follow from: the data settings, the
    tokenizer (its whole definition where it is a fast one) and the data files' bytes."""
    digest = hashlib.sha256()
    settings = {"store": STORE_VERSION, "fingerprint": FINGERPRINT_VERSION, **cfg.model_dump()}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else None
    digest.update((definition or json.dumps(sorted(tokenizer.get_vocab().items()))).encode())
    template = getattr(tokenizer, "chat_template", None)
    digest.update(repr((tokenizer.eos_token_id, template)).encode())
    if cfg.path is None:
        digest.update(f"shakespeare {SHAKESPEARE_SHA256}".encode())
        return digest.hexdigest()
    root = Path(cfg.path).expanduser()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        digest.update(str(path.relative_to(root) if path != root else path.name).encode())
        digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()
