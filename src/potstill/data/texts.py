"""Texts to label: one text per row (or per non-empty line of a ``.txt``), with an id, a
sha256, and optionally a gold label.

`read_texts` reads ``.txt``, ``.jsonl``, ``.csv`` and ``.parquet``; every mistake (a
malformed row, a missing field, an empty text) is one `PotstillError` naming the file,
the line and the fix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potstill.data.corpus import polarity_sentences
from potstill.data.sources import (
    _csv_rows,
    _guess_field,
    _jsonl_rows,
    _read_text,
    _type_name,
    read_parquet,
)
from potstill.util.errors import PotstillError

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")


def text_sha256(text: str) -> str:
    """sha256 of a text's UTF-8 bytes.

    >>> text_sha256("")[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class TextSet:
    """Texts in file order: ``ids`` are row indices (non-empty lines for ``.txt``),
    ``labels`` the gold labels when a label field was asked for."""

    name: str
    ids: list[int]
    texts: list[str]
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def sha256s(self) -> list[str]:
        return [text_sha256(t) for t in self.texts]


SHIPPED = "shipped:"
SHIPPED_SETS = ("pang-lee-polarity/train", "pang-lee-polarity/test")


def shipped_texts(ref: str, *, with_labels: bool) -> TextSet:
    """``shipped:pang-lee-polarity/train`` or ``/test``: the 200 polarity sentences gensim
    ships, split by position (even rows train, odd rows test: 100 each, 50 per label)."""
    name = ref.removeprefix(SHIPPED)
    if name not in SHIPPED_SETS:
        raise PotstillError(
            f"{ref} is not shipped data; known: {', '.join(SHIPPED + s for s in SHIPPED_SETS)}"
        )
    rows = polarity_sentences()
    part = rows[0::2] if name.endswith("/train") else rows[1::2]
    return TextSet(
        name,
        list(range(len(part))),
        [text for text, _ in part],
        [label for _, label in part] if with_labels else None,
    )


def read_texts(
    path: str | Path, text_field: str = "text", label_field: str | None = None
) -> TextSet:
    """Read the texts (and gold labels under ``label_field``) of a ``.txt`` (one text per
    non-empty line), ``.jsonl``, ``.csv`` or ``.parquet`` file."""
    if str(path).startswith(SHIPPED):
        return shipped_texts(str(path), with_labels=label_field is not None)
    path = Path(path).expanduser()
    if not path.is_file():
        raise PotstillError(
            f"{path} is not a file; point task.train/task.test at a {', '.join(TEXT_SUFFIXES)} file"
        )
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if label_field is not None:
            raise PotstillError(
                f"{path}: a .txt file has no '{label_field}' field for labels; "
                "use .jsonl/.csv/.parquet for labelled texts, or unset task.label_field"
            )
        lines = [line.strip() for line in _read_text(path).split("\n")]
        texts = [line for line in lines if line]
        if not texts:
            raise PotstillError(f"{path} holds no text; put one text per line in it")
        return TextSet(path.name, list(range(len(texts))), texts)
    if suffix == ".jsonl":
        rows: Iterable[tuple[str, Any]] = _jsonl_rows(path)
    elif suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise PotstillError(
            f"{path}: unsupported file type {suffix or '(none)'}; use one of "
            f"{', '.join(TEXT_SUFFIXES)}"
        )
    texts, labels = [], []
    for where, row in rows:
        if not isinstance(row, dict):
            raise PotstillError(
                f"{where}: expected an object with a '{text_field}' field, "
                f"got {_type_name(row)}; fix or remove that line"
            )
        texts.append(_text(row, text_field, where))
        if label_field is not None:
            labels.append(_label(row, label_field, where))
    if not texts:
        raise PotstillError(f"{path} holds no rows; give it one row per text")
    return TextSet(
        path.name, list(range(len(texts))), texts, labels if label_field is not None else None
    )


def _parquet_rows(path: Path) -> Iterable[tuple[str, Any]]:
    for i, row in enumerate(read_parquet(path).to_pylist(), start=1):
        yield f"{path} row {i}", row


def _text(row: dict[str, Any], field: str, where: str) -> str:
    if field not in row:
        fields = ", ".join(row) or "none"
        raise PotstillError(
            f"{where}: no '{field}' field (the row has: {fields}); "
            f"set task.text_field={_guess_field(row, field, exclude=set())}"
        )
    value = row[field]
    if not isinstance(value, str):
        what = "empty (null)" if value is None else f"{_type_name(value)}, not text"
        raise PotstillError(f"{where}: field '{field}' is {what}; fill it in or drop that row")
    if not value.strip():
        raise PotstillError(f"{where}: field '{field}' is empty; fill it in or drop that row")
    return value


def _label(row: dict[str, Any], field: str, where: str) -> str:
    if field not in row:
        fields = ", ".join(row) or "none"
        raise PotstillError(
            f"{where}: no '{field}' label field (the row has: {fields}); "
            "set task.label_field to the column of gold labels, or unset it"
        )
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        what = "empty" if value is None or isinstance(value, str) else _type_name(value)
        raise PotstillError(
            f"{where}: label field '{field}' is {what}, not a label name; "
            "fill it in or drop that row"
        )
    return str(value)
