"""Language-model data: read a user's text (or the shipped Shakespeare), tokenize, pack into
blocks, and hold out whole documents for evaluation.

``load_data(cfg, tokenizer)`` is the one entry point; see `sources` for the formats read,
`packing` for tokenizing, packing and the held-out split, `corpus` for the default corpus.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from potstill.data.corpus import shakespeare_documents
from potstill.data.packing import (
    Blocks,
    TokenizedDoc,
    cap_blocks,
    choose_heldout,
    eos_id,
    pack,
    split_blocks,
    tokenize_chat_examples,
    tokenize_examples,
    tokenize_texts,
)
from potstill.data.settings import DataConfig
from potstill.data.sources import Document, Source, read_source
from potstill.util.errors import PotstillError

__all__ = ["Blocks", "LMData", "load_data", "shakespeare_documents"]

_FINGERPRINT_VERSION = 1


@dataclass
class LMData:
    """Packed train and held-out blocks, and what they came from."""

    train: Blocks
    heldout: Blocks
    name: str  # "shakespeare", or the name of data.path
    fingerprint: str  # sha256 of the texts, tokenizer vocab, block_size, heldout, seed
    kind: str  # "text" or "prompt_response"
    split: str  # one line: how the held-out set was chosen


def load_data(cfg: DataConfig, tokenizer) -> LMData:
    """Read ``cfg.path`` (None: the shipped Shakespeare corpus), tokenize with ``tokenizer``
    (a fast HF tokenizer with an eos token) and pack into ``cfg.block_size`` blocks.

    The held-out set is whole documents chosen with ``cfg.seed`` until they hold
    ``cfg.heldout`` of the tokens (or, for a single document, its last blocks; or a
    datasets folder's own 'test'/'validation' split), capped at ``cfg.max_heldout_tokens``.
    Train and held-out are packed separately, so no block mixes the two.
    """
    if cfg.path is None:
        source = Source("shakespeare", "text", [text for _, text in shakespeare_documents()])
    else:
        source = read_source(cfg.path, cfg)
    unit = "documents" if source.kind == "text" else "examples"
    docs = _tokenize(source.kind, tokenizer, _nonempty(source.documents), cfg)
    held_docs = None
    if source.heldout is not None:
        held_docs = _tokenize(source.kind, tokenizer, _nonempty(source.heldout), cfg)
    train, heldout, split = _split(docs, held_docs, cfg, unit, source.heldout_split)

    if len(train) == 0 or len(heldout) == 0:
        count = len(docs) + len(held_docs or [])
        total = sum(len(d) for d in docs + (held_docs or []))
        raise PotstillError(
            f"data {source.name}: found {total} tokens in {_plural(count, unit)}, which make "
            f"{len(train)} train and {len(heldout)} held-out blocks of "
            f"data.block_size={cfg.block_size}; at least one of each is needed "
            f"({2 * cfg.block_size}+ tokens): add more text or set a smaller data.block_size"
        )
    heldout = cap_blocks(heldout, cfg.max_heldout_tokens)
    return LMData(
        train=train,
        heldout=heldout,
        name=source.name,
        fingerprint=_fingerprint(cfg, tokenizer, source, train, heldout),
        kind=source.kind,
        split=split,
    )


def _split(
    docs: list[TokenizedDoc],
    held_docs: list[TokenizedDoc] | None,
    cfg: DataConfig,
    unit: str,
    split_name: str | None,
) -> tuple[Blocks, Blocks, str]:
    """Pack train and held-out separately; returns them and a one-line description."""
    bs, cap = cfg.block_size, cfg.max_heldout_tokens
    total = sum(len(d) for d in docs)
    if held_docs is not None:  # the data's own split
        heldout = pack(held_docs, bs)
        capped = cap is not None and len(heldout) * bs > cap
        split = f"held-out: the dataset's '{split_name}' split, {_plural(len(held_docs), unit)}"
        train = pack(docs, bs)
    elif len(docs) >= 2:
        lengths = [len(d) for d in docs]
        min_tokens = bs
        while True:  # grow the held-out set until it packs into a block with a label
            chosen = choose_heldout(lengths, cfg.heldout, cfg.seed, min_tokens, cap)
            heldout = pack([docs[i] for i in chosen], bs)
            if len(heldout) or min_tokens >= total:
                break
            min_tokens *= 2
        held_set = set(chosen)
        train = pack([d for i, d in enumerate(docs) if i not in held_set], bs)
        share = sum(lengths[i] for i in chosen) / total
        capped = cap is not None and cfg.heldout * total > cap
        split = f"held-out: {len(chosen)} of {len(docs)} {unit} ({share:.1%} of tokens)"
    else:
        blocks = pack(docs, bs)
        max_blocks = None if cap is None else max(1, cap // bs)
        train, heldout = split_blocks(blocks, cfg.heldout, max_blocks)
        capped = max_blocks is not None and math.ceil(cfg.heldout * len(blocks)) > max_blocks
        split = f"held-out: the last {len(heldout)} of {len(blocks)} blocks of the one {unit[:-1]}"
    if capped:
        split += f", capped at {cap} tokens"
    return train, heldout, split


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit if n != 1 else unit.removesuffix('s')}"


def _nonempty(documents: list[Document]) -> list[Document]:
    """Drop blank texts (a blank line in a file is no document); examples are kept whole."""
    return [d for d in documents if not isinstance(d, str) or d.strip()]


def _tokenize(
    kind: str, tokenizer, documents: list[Document], cfg: DataConfig
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


def _fingerprint(cfg: DataConfig, tokenizer, source: Source, train: Blocks, heldout: Blocks) -> str:
    """sha256 over everything that decides the blocks: settings, vocab, texts and tokens."""
    digest = hashlib.sha256()
    settings = {
        "version": _FINGERPRINT_VERSION,
        "kind": source.kind,
        "block_size": cfg.block_size,
        "heldout": cfg.heldout,
        "max_heldout_tokens": cfg.max_heldout_tokens,
        "seed": cfg.seed,
        "heldout_split": source.heldout_split,
        "eos": eos_id(tokenizer),
    }
    if cfg.chat_template:  # only when set: older fingerprints (and caches) stay valid
        settings["chat_template"] = True
        settings["system"] = cfg.system
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for group in (source.documents, source.heldout or []):
        digest.update(b"\x00group")
        for doc in group:
            for text in (doc,) if isinstance(doc, str) else doc:
                data = text.encode("utf-8")
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
    for tensor in (train.input_ids, train.labels, heldout.input_ids, heldout.labels):
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
