"""Read a ``data.path`` as a stream: the documents `read_source` gives, a file (or a batch
of rows) at a time.

`open_source` reads everything once to check it, raising the one-line `PotstillError`
`read_source` would raise (the same first mistake) and learning the kind of the documents,
which a fingerprint hashes before any text. The `StreamedSource` it returns reads the files
again each time its ``documents`` (or ``heldout``) are iterated, holding one row at a time
(a ``.jsonl``/``.csv`` line, or a batch of `_BATCH_ROWS` parquet or datasets rows). A
``.txt`` file is one document and a ``.json`` file one JSON value: each is read whole, so
one huge file is held whole; the gain is for corpora of many files or many rows.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potstill.data.settings import DataConfig
from potstill.data.sources import (
    SUPPORTED,
    Document,
    Kind,
    _csv_rows,
    _is_datasets_folder,
    _json_lines,
    _json_rows,
    _load_from_disk,
    _read_text,
    _row_documents,
    _table_kind,
    _unreadable,
    check_text_column,
    existing,
    first_null,
    folder_files,
    one_kind,
    read_parquet,
    table_fields,
)
from potstill.util.errors import PotstillError

_BATCH_ROWS = 256  # parquet/datasets rows turned into Python strings at a time
_BLOCK_BYTES = 1 << 18  # bytes read at a time to check a .jsonl file is UTF-8

Stream = Callable[[], Iterator[tuple[Kind, Document]]]  # one part's (kind, document)s


class _Documents:
    """The documents of some parts (files or a split), read again on each iteration."""

    def __init__(self, parts: list[tuple[str, Stream]]) -> None:
        self._parts = parts

    def __iter__(self) -> Iterator[Document]:
        for _, stream in self._parts:
            for _, doc in stream():
                yield doc


@dataclass
class StreamedSource:
    """Documents under one ``data.path``, all of one kind, as `sources.Source` holds them
    but read from the files each time ``documents`` or ``heldout`` is iterated."""

    name: str
    kind: Kind
    documents: Iterable[Document]
    heldout: Iterable[Document] | None = None  # a held-out split the data brings itself
    heldout_split: str | None = None  # its name, e.g. "test"


def open_source(path: str | Path, cfg: DataConfig) -> StreamedSource:
    """Check every document under ``path`` (as `read_source` reads it, with its errors)
    and return them as a stream; see the module's docstring."""
    path, name = existing(path)
    if path.is_dir() and _is_datasets_folder(path):
        return _open_datasets_folder(path, name, cfg)
    if path.is_dir():
        files = folder_files(path)
        parts = [(str(f), _file_stream(f, cfg)) for f in files]
        return StreamedSource(name, _kind(parts, str(path)), _Documents(parts))
    parts = [(str(path), _file_stream(path, cfg))]
    return StreamedSource(name, _kind(parts, str(path)), _Documents(parts))


def _kind(parts: list[tuple[str, Stream]], where: str) -> Kind:
    """Read every part to check it; the one kind of their documents (`sources._one_kind`,
    after every part is read, as `read_source` reads them all first)."""
    kinds: dict[str, str] = {}
    for part, stream in parts:
        for kind, _ in stream():
            kinds.setdefault(kind, part)
    return one_kind(kinds, where)


# --- files ---------------------------------------------------------------------------------


def _file_stream(path: Path, cfg: DataConfig) -> Stream:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return lambda: iter([("text", _read_text(path))])
    if suffix == ".jsonl":
        return lambda: _row_documents(_jsonl_rows(path), cfg)
    if suffix == ".json":
        return lambda: _row_documents(_json_rows(path), cfg)
    if suffix == ".csv":
        return lambda: _row_documents(_csv_rows(path), cfg)
    if suffix == ".parquet":
        return lambda: _table_stream(_ParquetTable(path), str(path), cfg)
    raise PotstillError(
        f"data.path {path}: unsupported file type {suffix or '(none)'}; "
        f"use one of {', '.join(SUPPORTED)}, a datasets folder, or a folder of such files"
    )


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """`sources._jsonl_rows`, a line at a time: the whole file is checked to be UTF-8
    first, so a bad byte anywhere is the error, as when the file is read whole."""
    _check_utf8(path)
    try:
        # text mode, as Path.read_text: a BOM dropped, "\r\n" and "\r" read as "\n"
        with open(path, encoding="utf-8-sig") as f:
            yield from _json_lines(path, (line.removesuffix("\n") for line in f))
    except OSError as e:
        raise _unreadable(path, e) from None


def _check_utf8(path: Path) -> None:
    """Raise `sources._read_text`'s error if ``path`` is not UTF-8, with the same offset
    (counted after a BOM), reading a block at a time."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(codecs.BOM_UTF8))
            if len(head) < len(codecs.BOM_UTF8) and codecs.BOM_UTF8.startswith(head):
                return  # a BOM's first bytes alone: utf-8-sig reads them as no text
            pending = head.removeprefix(codecs.BOM_UTF8)
            offset = 0  # of pending's first byte
            while True:
                block = f.read(_BLOCK_BYTES)
                pending += block
                # cut after a newline: no UTF-8 sequence spans one, so the bytes before
                # decode (or fail, at the same byte) as they do within the whole file
                cut = pending.rfind(b"\n") + 1 if block else len(pending)
                try:
                    pending[:cut].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise PotstillError(
                        f"{path} is not UTF-8 text (bad byte at offset {offset + e.start}); "
                        "convert it to UTF-8"
                    ) from None
                offset += cut
                pending = pending[cut:]
                if not block:
                    return
    except OSError as e:
        raise _unreadable(path, e) from None


# --- tables: parquet and datasets ------------------------------------------------------------


class _ParquetTable:
    """A parquet file read a row group (or batch) at a time; any failure of pyarrow is
    `read_parquet`'s error for the file."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self._file = self._arrow(lambda: pq.ParquetFile(path))
        self.num_rows: int = self._file.metadata.num_rows

    def _arrow(self, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except Exception as e:
            read_parquet(self.path)  # its one-line error, when the file is unreadable
            raise PotstillError(
                f"{self.path} is not a readable parquet file ({e}); re-export it or convert "
                "it to .jsonl"
            ) from None

    def first_row(self) -> dict[str, Any]:
        return self._arrow(lambda: next(self._file.iter_batches(batch_size=1)).to_pylist()[0])

    def column_type(self, field: str):  # -> pyarrow.DataType
        return self._arrow(lambda: self._file.schema_arrow.field(field).type)

    def first_null(self, field: str) -> int | None:
        """Its first null's row: row groups whose statistics count no null are skipped."""
        metadata = self._file.metadata
        start = 0
        for group in range(metadata.num_row_groups):
            meta = metadata.row_group(group)
            stats = [
                meta.column(i).statistics
                for i in range(meta.num_columns)
                if meta.column(i).path_in_schema == field
            ]
            counted = bool(stats) and stats[0] is not None and stats[0].has_null_count
            if not counted or stats[0].null_count:
                table = self._arrow(lambda g=group: self._file.read_row_group(g, columns=[field]))
                row = first_null(table.column(field))
                if row is not None:
                    return start + row
            start += meta.num_rows
        return None

    def batches(self, fields: list[str]) -> Iterator[list[list[Any]]]:
        batches = self._arrow(
            lambda: self._file.iter_batches(batch_size=_BATCH_ROWS, columns=fields)
        )
        while True:
            batch = self._arrow(lambda: next(batches, None))
            if batch is None:
                return
            yield [batch.column(field).to_pylist() for field in fields]


class _ArrowTable:
    """A pyarrow table (a datasets split, memory-mapped), a batch of rows at a time."""

    def __init__(self, table) -> None:
        self._table = table
        self.num_rows: int = table.num_rows

    def first_row(self) -> dict[str, Any]:
        return self._table.slice(0, 1).to_pylist()[0]

    def column_type(self, field: str):  # -> pyarrow.DataType
        return self._table.column(field).type

    def first_null(self, field: str) -> int | None:
        return first_null(self._table.column(field))

    def batches(self, fields: list[str]) -> Iterator[list[list[Any]]]:
        for start in range(0, self.num_rows, _BATCH_ROWS):
            rows = self._table.slice(start, _BATCH_ROWS)
            yield [rows.column(field).to_pylist() for field in fields]


def _table_stream(
    table: _ParquetTable | _ArrowTable, where: str, cfg: DataConfig
) -> Iterator[tuple[Kind, Document]]:
    """`sources._table_documents`, a batch at a time: the first row decides the kind, and
    every column read is checked (text, no null) before any document is given."""
    if table.num_rows == 0:
        return
    kind = _table_kind(table.first_row(), where, cfg)
    fields = table_fields(kind, cfg)
    for cfg_key, field in fields:
        check_text_column(
            table.column_type(field),
            lambda f=field: table.first_null(f),
            where,
            field,
            cfg_key,
        )
    for columns in table.batches([field for _, field in fields]):
        docs = columns[0] if kind == "text" else zip(columns[0], columns[1], strict=True)
        for doc in docs:
            yield kind, doc


def _open_datasets_folder(path: Path, name: str, cfg: DataConfig) -> StreamedSource:
    """`sources._read_datasets_folder`, as a stream of each split."""
    import datasets

    loaded = _load_from_disk(path)

    def split(ds, where: str) -> Stream:
        return lambda: _table_stream(_ArrowTable(ds.with_format("arrow")[:]), where, cfg)

    if isinstance(loaded, datasets.Dataset):
        parts = [(str(path), split(loaded, str(path)))]
        return StreamedSource(name, _kind(parts, str(path)), _Documents(parts))
    splits = list(loaded)
    train = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
    if train is None:
        raise PotstillError(
            f"{path} has splits {', '.join(splits)} but no 'train' split; "
            "name the training split 'train'"
        )
    train_part = (f"{path}[{train}]", split(loaded[train], f"{path}[{train}]"))
    held = next((s for s in ("test", "validation") if s in splits and s != train), None)
    if held is None:
        return StreamedSource(name, _kind([train_part], str(path)), _Documents([train_part]))
    held_part = (f"{path}[{held}]", split(loaded[held], f"{path}[{held}]"))
    kind = _kind([train_part, held_part], str(path))
    return StreamedSource(
        name, kind, _Documents([train_part]), _Documents([held_part]), heldout_split=held
    )
