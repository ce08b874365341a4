"""Which of a teacher's tokens are also a student's: two vocabularies matched by bytes.

Two tokenizers of one language share most of their common tokens (`` the``, ``ing``,
``.\\n``): the same bytes, under other ids. A teacher id and a student id whose tokens
decode to the same bytes predict the same next text, so the teacher's probability of one
is a target for the student's probability of the other (`potstill.losses.shared`; the
exact vocabulary matches of GOLD's hybrid loss, Hugging Face TRL's cross-tokenizer
distillation).

Each token's bytes are read from the vocabulary itself, not by decoding it alone (a
byte-level token that holds half a character decodes to a replacement mark, and
sentencepiece decoders strip a leading space):

- byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): each character of the token string
  stands for one byte (GPT-2's printable byte alphabet);
- sentencepiece-style (Llama 2, Mistral, Gemma): ``▁`` is a space, ``<0xNN>`` a byte
  fallback token, anything else its UTF-8.

Added and special tokens (``<|endoftext|>``, chat markers) are never matched: they are
control symbols, and two models' are rarely the same symbol.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import numpy as np

from potstill.util.errors import PotstillError

NO_ID = -1  # a teacher id whose token the student's vocabulary lacks

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def shared_ids(teacher_tokenizer: Any, student_tokenizer: Any, teacher_rows: int) -> np.ndarray:
    """For each of the teacher's ``teacher_rows`` output ids, the student id of the same
    bytes, or ``NO_ID``.

    Args:
        teacher_tokenizer: the teacher's Hugging Face (fast) tokenizer.
        student_tokenizer: the student's.
        teacher_rows: the rows of the teacher's output layer (its cache's ``vocab_size``);
            rows past the tokenizer's vocabulary (padding) get ``NO_ID``.

    Returns:
        ``(teacher_rows,)`` int64: one to one where not ``NO_ID`` (the bytes of a
        vocabulary's tokens are distinct).
    """
    if teacher_rows < 1:
        raise ValueError(f"teacher_rows must be at least 1, got {teacher_rows}")
    student_by_bytes = {b: i for i, b in enumerate(token_bytes(student_tokenizer)) if b}
    mapping = np.full(teacher_rows, NO_ID, dtype=np.int64)
    for i, b in enumerate(token_bytes(teacher_tokenizer)[:teacher_rows]):
        if b:
            mapping[i] = student_by_bytes.get(b, NO_ID)
    return mapping


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Each id's bytes (index = id), ``None`` for added and special tokens and unused ids.

    Raises:
        PotstillError: a tokenizer that is neither byte-level nor sentencepiece-style.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PotstillError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: matching two vocabularies "
            "needs its tokenizer.json (load it with use_fast=True)"
        )
    spec = json.loads(backend.to_str())
    byte_level = _uses(spec.get("decoder"), "ByteLevel")
    if not byte_level and not _uses(spec.get("decoder"), "Metaspace", "ByteFallback", "Replace"):
        kind = (spec.get("decoder") or {}).get("type")
        raise PotstillError(
            f"cannot read the bytes of this tokenizer's tokens (decoder {kind}): only "
            "byte-level BPE and sentencepiece-style vocabularies are matched; use the loss "
            "that needs no shared tokens (loss: [{loss: uld}, {loss: cross_entropy}])"
        )
    vocab = tokenizer.get_vocab()
    added = set(tokenizer.get_added_vocab().values()) | set(tokenizer.all_special_ids)
    out: list[bytes | None] = [None] * (max(vocab.values()) + 1 if vocab else 0)
    decode = _byte_level if byte_level else _sentencepiece
    for token, i in vocab.items():
        if i not in added:
            out[i] = decode(token)
    return out


def _uses(decoder: dict | None, *kinds: str) -> bool:
    """Whether ``decoder`` (a tokenizer.json decoder) is, or holds, one of ``kinds``."""
    if not decoder:
        return False
    if decoder.get("type") in kinds:
        return True
    return any(_uses(part, *kinds) for part in decoder.get("decoders") or [])


@cache
def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, shifted = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shifted)
            shifted += 1
    return {c: b for b, c in chars.items()}


def _byte_level(token: str) -> bytes | None:
    alphabet = _byte_alphabet()
    try:
        return bytes(alphabet[c] for c in token)
    except KeyError:  # not a byte-level token (an added word kept whole)
        return None


def _sentencepiece(token: str) -> bytes:
    fallback = _BYTE_FALLBACK.fullmatch(token)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    return token.replace("▁", " ").encode()
