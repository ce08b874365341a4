"""Tokenize documents, pick a held-out set of whole documents, and pack tokens into blocks.

A *document* is either a text or a prompt/response example. Each becomes one token
sequence ending in the tokenizer's eos token; the first ``num_masked`` tokens of an
example (its prompt) get label -100 so that no loss is taken on them. Sequences are then
concatenated and cut into blocks of ``block_size`` tokens, dropping the last partial block.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from potstill.data.batch import Batch
from potstill.data.chat import render_chat
from potstill.util.errors import PotstillError
from potstill.util.tokens import IGNORE_INDEX

_BATCH_CHARS = 4_000_000


@dataclass
class Blocks:
    """Packed training data, HF convention: ``labels`` aligned with ``input_ids``.

    input_ids: (N, L) long token ids.
    labels:    (N, L) long, ``labels[t] == input_ids[t]`` or -100 where no loss is taken
               (prompt tokens); the training loop does the causal shift.

    >>> b = Blocks(torch.tensor([[5, 6, 7]]), torch.tensor([[-100, 6, 7]]))
    >>> len(b), b.num_tokens
    (1, 2)
    """

    input_ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Tokens that carry a label (not -100)."""
        return int((self.labels != IGNORE_INDEX).sum())

    def batch(self, index: torch.Tensor) -> Batch:
        """Blocks ``index`` as a `Batch` (packed: no padding, so the mask is all True)."""
        return Batch.of(self.input_ids[index], self.labels[index], index)

    def chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(ids, labels)`` over every block, as `StoredBlocks` walks its rows: here one
        chunk, all of them."""
        yield self.input_ids, self.labels


@dataclass
class TokenizedDoc:
    """One document's tokens, eos included; its first ``num_masked`` are not trained on."""

    ids: np.ndarray  # (T,) int32
    num_masked: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise PotstillError(
            f"tokenizer {type(tokenizer).__name__} has no eos token, which separates documents; "
            "give it one (tokenizer.eos_token = ...) or use the model's own tokenizer"
        )
    return int(eos)


def encode(tokenizer, texts: Sequence[str]) -> Iterator[list[int]]:
    """Token ids of each text in order, no special tokens added.

    A fast tokenizer encodes in batches on all cores, through its Rust backend directly
    (same ids as ``tokenizer(texts)``, without a warning for texts over the model length).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (pure Python) tokenizer
        for batch in _batches(texts):
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
        return
    if backend.truncation is not None or backend.padding is not None:
        # A tokenizer.json may carry truncation/padding settings; never apply them here.
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    run = getattr(backend, "encode_batch_fast", backend.encode_batch)
    for batch in _batches(texts):
        for encoding in run(batch, add_special_tokens=False):
            yield encoding.ids


def _batches(texts: Sequence[str]) -> Iterator[list[str]]:
    """Runs of texts of about _BATCH_CHARS characters: bounds the memory that the
    tokenizer's Encoding objects take, while each batch still fills every core."""
    batch: list[str] = []
    chars = 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenize_texts(tokenizer, texts: Sequence[str]) -> list[TokenizedDoc]:
    """text + eos per document."""
    eos = eos_id(tokenizer)
    docs = []
    for ids in encode(tokenizer, texts):
        ids.append(eos)
        docs.append(TokenizedDoc(np.array(ids, dtype=np.int32)))
    return docs


def tokenize_chat_examples(
    tokenizer, examples: Sequence[tuple[str, str]], system: str | None = None
) -> list[TokenizedDoc]:
    """Each example as a chat: ``system`` (if given) and the prompt as the user's turn (the
    template's assistant header included, as at serving time), the response as the
    assistant's turn up to and including the template's end of turn; the prompt's tokens
    masked."""
    if not getattr(tokenizer, "chat_template", None):
        raise PotstillError(
            "data.chat_template is true but the tokenizer has no chat template; "
            "set data.chat_template=false for plain prompt + response"
        )
    docs = []
    for prompt, response in examples:
        turns = [{"role": "system", "content": system}] if system else []
        turns.append({"role": "user", "content": prompt})
        head_ids, tail_ids = render_chat(
            tokenizer, turns, response, fix="set data.chat_template=false"
        )
        ids = np.array([*head_ids, *tail_ids], dtype=np.int32)
        docs.append(TokenizedDoc(ids, num_masked=len(head_ids)))
    return docs


def tokenize_examples(tokenizer, examples: Sequence[tuple[str, str]]) -> list[TokenizedDoc]:
    """prompt + response + eos per example, with the prompt tokens masked."""
    eos = eos_id(tokenizer)
    prompts = encode(tokenizer, [p for p, _ in examples])
    responses = encode(tokenizer, [r for _, r in examples])
    return [
        TokenizedDoc(np.array([*p, *r, eos], dtype=np.int32), num_masked=len(p))
        for p, r in zip(prompts, responses, strict=True)
    ]


def pack(docs: Sequence[TokenizedDoc], block_size: int) -> Blocks:
    """Concatenate documents and cut into (N, block_size) blocks; the last partial one is
    dropped, and so is any block with no trainable token (a prompt longer than a block)."""
    ids = np.concatenate([np.empty(0, np.int32)] + [d.ids for d in docs]).astype(np.int64)
    labels = ids.copy()
    if any(d.num_masked for d in docs):
        pos = 0
        for d in docs:
            labels[pos : pos + d.num_masked] = IGNORE_INDEX
            pos += len(d)
    n = len(ids) // block_size
    input_ids = torch.from_numpy(ids[: n * block_size].reshape(n, block_size))  # (N, L)
    labels_t = torch.from_numpy(labels[: n * block_size].reshape(n, block_size))  # (N, L)
    keep = (labels_t != IGNORE_INDEX).any(dim=1)
    if not bool(keep.all()):
        input_ids, labels_t = input_ids[keep], labels_t[keep]
    return Blocks(input_ids.contiguous(), labels_t.contiguous())


def choose_heldout(
    lengths: Sequence[int],
    fraction: float,
    seed: int,
    min_tokens: int,
    max_tokens: int | None = None,
) -> list[int]:
    """Indices (sorted) of whole documents to hold out, chosen in a seeded random order.

    Documents move to held-out until it holds at least ``fraction`` of all tokens (but no
    more than ``max_tokens`` are asked for: documents past the cap would be neither
    trained on nor evaluated) and at least ``min_tokens`` (one block). A document that
    would push held-out past half of all tokens (or past ``fraction``, if larger) is
    skipped, so one huge file cannot starve training. At least one document is held out
    and at least one is kept for training.

    >>> choose_heldout([100] * 10, 0.2, seed=0, min_tokens=8) == choose_heldout(
    ...     [100] * 10, 0.2, seed=0, min_tokens=8)
    True
    >>> len(choose_heldout([100] * 10, 0.2, seed=0, min_tokens=8))
    2
    """
    n = len(lengths)
    if n < 2:
        raise ValueError("choose_heldout needs at least two documents")
    total = sum(lengths)
    target = fraction * total
    if max_tokens is not None:
        target = min(target, max_tokens)
    target = max(target, min_tokens)
    limit = max(0.5, fraction) * total
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held: list[int] = []
    held_tokens = 0
    for i in order:
        if held_tokens >= target or len(held) == n - 1:
            break
        if held_tokens + lengths[i] > limit:
            continue  # with n >= 2, some document is at most half of all tokens
        held.append(i)
        held_tokens += lengths[i]
    return sorted(held)


def split_blocks(
    blocks: Blocks, fraction: float, max_blocks: int | None = None
) -> tuple[Blocks, Blocks]:
    """One document: its last ceil(fraction × N) blocks (at most ``max_blocks``) are held
    out, contiguous, so no text is on both sides; at least one block stays for training."""
    cut = len(blocks) - heldout_block_count(len(blocks), fraction, max_blocks)
    train = Blocks(blocks.input_ids[:cut], blocks.labels[:cut])
    heldout = Blocks(blocks.input_ids[cut:], blocks.labels[cut:])
    return train, heldout


def heldout_block_count(n: int, fraction: float, max_blocks: int | None = None) -> int:
    """How many of one document's ``n`` blocks `split_blocks` holds out.

    >>> heldout_block_count(10, 0.05), heldout_block_count(100, 0.5, max_blocks=8)
    (1, 8)
    """
    k = math.ceil(fraction * n)
    if max_blocks is not None:
        k = min(k, max_blocks)
    return min(max(1, k), n - 1) if n >= 2 else 0


def cap_blocks(blocks: Blocks, max_tokens: int | None) -> Blocks:
    """Keep the first blocks, at most ``max_tokens`` tokens (but at least one block)."""
    if max_tokens is None or len(blocks) == 0:
        return blocks
    keep = max(1, max_tokens // blocks.input_ids.shape[1])
    if keep >= len(blocks):
        return blocks
    return Blocks(blocks.input_ids[:keep].clone(), blocks.labels[:keep].clone())
