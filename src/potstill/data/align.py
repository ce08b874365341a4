"""Positions of two tokenizations of one text that predict the same text.

A student of another tokenizer than its teacher's reads the same text in other tokens, so
its position ``i`` and the teacher's position ``i`` predict different things. Here a
student position is paired with the teacher position whose context ends at the same
character: both have read exactly the text ``[0, e)`` and both predict the text that
starts at ``e``. Positions whose context ends where no teacher token ends are left out
(masked), and the share kept is reported.

Why this and not the alternatives: ULD's own alignment (Boizard et al. 2024, "Towards
Cross-Tokenizer Distillation: the Universal Logit Distillation Loss") pairs positions by
index, so from the first token where the two tokenizers split differently it compares
predictions made after different amounts of text. GOLD-style span alignment merges
tokens into common spans and compares span probabilities, which needs products of
probabilities over several steps of each model. Pairing equal character boundaries needs
one forward pass of each model, never compares predictions made after different text,
and keeps most positions (tokenizers of one language agree on most word boundaries);
ULD's sorted-distribution loss (`potstill.losses.universal`) then needs no shared ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

UNALIGNED = -1  # a student position with no teacher position of the same boundary


@dataclass(frozen=True)
class Alignment:
    """One text's two tokenizations, their positions paired.

    Args:
        text: the text both tokenizations cover.
        teacher_ids: ``(M,)`` int64, the teacher's tokens of ``text``.
        teacher_position: ``(N − 1,)`` int64: for each student position ``i`` (which
            predicts student token ``i + 1``), the teacher position whose context ends at
            the same character, or ``UNALIGNED`` (-1).
    """

    text: str
    teacher_ids: np.ndarray
    teacher_position: np.ndarray

    @property
    def aligned(self) -> np.ndarray:
        """``(N − 1,)`` bool: the student positions that have a teacher position."""
        return self.teacher_position != UNALIGNED

    @property
    def share(self) -> float:
        """The share of student positions that are aligned (0 for a one-token text)."""
        return float(self.aligned.mean()) if len(self.aligned) else 0.0


def context_ends(tokenizer: Any, ids: Sequence[int]) -> tuple[str, np.ndarray]:
    """``ids`` decoded, and where each token's context ends in that text.

    Token ``i``'s end is the length of ``ids[: i + 1]`` decoded. Where that decoded prefix
    is not a prefix of the whole text (a byte-level token that splits a character decodes
    to a replacement mark until the character is complete) the end is -1: no boundary.

    Args:
        tokenizer: a Hugging Face tokenizer.
        ids: the token ids, in order.

    Returns:
        ``(text, ends)``, ``ends`` ``(len(ids),)`` int64.
    """
    ids = [int(i) for i in ids]
    text = _decode(tokenizer, ids)
    ends = np.full(len(ids), -1, dtype=np.int64)
    for i in range(len(ids)):
        prefix = _decode(tokenizer, ids[: i + 1])
        if text.startswith(prefix):
            ends[i] = len(prefix)
    return text, ends


def pair_positions(student_ends: np.ndarray, teacher_ends: np.ndarray) -> np.ndarray:
    """For each student position but the last, the teacher position (not the teacher's
    last) whose context ends at the same character; ``UNALIGNED`` where none does.

    Where several teacher positions end at one character (a token of no text), the last
    is taken: it has read the most. A student end of -1 (no boundary) is never paired.

    Args:
        student_ends: ``(N,)`` int64 context ends of the student's tokens (`context_ends`).
        teacher_ends: ``(M,)`` int64 context ends of the teacher's tokens.

    Returns:
        ``(N − 1,)`` int64 teacher positions.

    >>> pair_positions(np.array([2, 5, 6, 9]), np.array([3, 5, 9, 10])).tolist()
    [-1, 1, -1]
    """
    _check_ends("student_ends", student_ends)
    _check_ends("teacher_ends", teacher_ends)
    at: dict[int, int] = {}
    for j, end in enumerate(teacher_ends[:-1].tolist()):  # the teacher's last predicts nothing
        if end >= 0:
            at[end] = j  # a later position at the same end replaces an earlier one
    paired = [at.get(end, UNALIGNED) if end >= 0 else UNALIGNED for end in student_ends[:-1]]
    return np.asarray(paired, dtype=np.int64)


def align(text_tokenizer: Any, student_ids: Sequence[int], teacher_tokenizer: Any) -> Alignment:
    """Decode ``student_ids`` with the student's tokenizer, tokenize that text with the
    teacher's (fast) tokenizer and its character offsets, and pair the positions.

    Args:
        text_tokenizer: the student's tokenizer (the one ``student_ids`` come from).
        student_ids: one block of student tokens, ``N >= 1``.
        teacher_tokenizer: a fast tokenizer (offsets need one).

    Returns:
        The `Alignment`; its ``teacher_position`` has ``N − 1`` entries.
    """
    if len(student_ids) < 1:
        raise ValueError("align: student_ids is empty; give one block of at least one token")
    if not getattr(teacher_tokenizer, "is_fast", False):
        raise ValueError(
            "align: the teacher's tokenizer is not a fast tokenizer, which character offsets "
            "need; load its tokenizer.json (use_fast=True)"
        )
    text, student_ends = context_ends(text_tokenizer, student_ids)
    encoded = teacher_tokenizer(text, return_offsets_mapping=True)
    teacher_ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    teacher_ends = np.asarray([end for _, end in encoded["offset_mapping"]], dtype=np.int64)
    if len(teacher_ids) == 0:  # an empty text: nothing to pair
        return Alignment(text, teacher_ids, np.full(len(student_ids) - 1, UNALIGNED))
    return Alignment(text, teacher_ids, pair_positions(student_ends, teacher_ends))


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _check_ends(name: str, ends: np.ndarray) -> None:
    if not isinstance(ends, np.ndarray) or ends.ndim != 1 or ends.dtype.kind not in "iu":
        shape = getattr(ends, "shape", None)
        raise ValueError(f"{name} must be a 1-D integer array, got {type(ends).__name__} {shape}")
    if len(ends) < 1:
        raise ValueError(f"{name} is empty: a tokenization has at least one token")
