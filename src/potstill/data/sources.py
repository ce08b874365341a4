"""Read a user's data into documents: texts, or (prompt, response) examples.

``data.path`` may name a ``.txt`` file (one document), a ``.jsonl``/``.json``/``.csv``/
``.parquet`` file (one document per row), a folder saved by HF ``datasets``
(``save_to_disk``), or a plain folder of such files. A row with both ``data.prompt_field``
and ``data.response_field`` is a prompt/response example; otherwise it needs
``data.text_field``. Every mistake in the data is one `PotstillError` naming the file, the
row, and the fix. `stream.open_source` reads the same documents, with the same errors, a
file (or a batch of rows) at a time, as packing a corpus does.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from potstill.data.settings import DataConfig
from potstill.util.errors import PotstillError

Kind = Literal["text", "prompt_response"]
Document = str | tuple[str, str]  # a text, or a (prompt, response) example

SUPPORTED = (".txt", ".jsonl", ".json", ".csv", ".parquet")
_KIND_WORDS = {"text": "text", "prompt_response": "prompt/response"}


@dataclass
class Source:
    """Documents read from one ``data.path``, all of one kind."""

    name: str
    kind: Kind
    documents: list[Document]
    heldout: list[Document] | None = None  # a held-out split the data brings itself
    heldout_split: str | None = None  # its name, e.g. "test"


def read_source(path: str | Path, cfg: DataConfig) -> Source:
    """Read every document under ``path`` (a file, a ``datasets`` folder, or a folder)."""
    path, name = existing(path)
    if path.is_dir() and _is_datasets_folder(path):
        return _read_datasets_folder(path, name, cfg)
    if path.is_dir():
        files = folder_files(path)
        parts = [(str(f), *_read_file(f, cfg)) for f in files]
        kind = _one_kind(parts, str(path))
        return Source(name, kind, [doc for _, _, docs in parts for doc in docs])
    kind, docs = _read_file(path, cfg)
    return Source(name, kind, docs)


def existing(path: str | Path) -> tuple[Path, str]:
    """``data.path`` with ``~`` expanded, and its name; refused when it does not exist."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PotstillError(
            f"data.path {path} does not exist: give a {', '.join(SUPPORTED)} file, "
            "a datasets folder, or a folder of such files"
        )
    return path, path.resolve().name


def folder_files(folder: Path) -> list[Path]:
    """The data files of a plain folder (`_data_files`); refused when it holds none."""
    files = _data_files(folder)
    if not files:
        raise PotstillError(
            f"data.path {folder} holds no data files ({', '.join(SUPPORTED)}); "
            "put your text in such files or point data.path at one"
        )
    return files


def _data_files(folder: Path) -> list[Path]:
    """Supported files under ``folder``, sorted by path; hidden entries and the internals
    of datasets folders (their .json metadata) are skipped."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        dirs[:] = [d for d in dirs if not _is_datasets_folder(Path(root, d))]
        for name in names:
            if not name.startswith(".") and Path(name).suffix.lower() in SUPPORTED:
                files.append(Path(root, name))
    return sorted(files)


def _read_file(path: Path, cfg: DataConfig) -> tuple[Kind, list[Document]]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "text", [_read_text(path)]
    if suffix == ".jsonl":
        return _documents(_jsonl_rows(path), cfg)
    if suffix == ".json":
        return _documents(_json_rows(path), cfg)
    if suffix == ".csv":
        return _documents(_csv_rows(path), cfg)
    if suffix == ".parquet":
        return _table_documents(read_parquet(path), str(path), cfg)
    raise PotstillError(
        f"data.path {path}: unsupported file type {suffix or '(none)'}; "
        f"use one of {', '.join(SUPPORTED)}, a datasets folder, or a folder of such files"
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PotstillError(
            f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it to UTF-8"
        ) from None
    except OSError as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, error: OSError) -> PotstillError:
    return PotstillError(
        f"data.path {path} cannot be read ({error.strerror or error}); check its permissions"
    )


# --- rows ----------------------------------------------------------------------------------


def _jsonl_rows(path: Path, text: str | None = None) -> Iterable[tuple[str, Any]]:
    text = _read_text(path) if text is None else text
    # split on "\n" only: str.splitlines would also split inside strings at U+2028 etc.
    yield from _json_lines(path, text.split("\n"))


def _json_lines(path: Path, lines: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """The rows of a file's lines (without their "\n"), numbered from 1; blank ones skipped."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PotstillError(
                f"{where}: not valid JSON ({e.msg}, column {e.colno}); fix or remove that line"
            ) from None
        yield where, row


def _json_rows(path: Path) -> Iterable[tuple[str, Any]]:
    """A JSON list of objects, or (as HF datasets also reads .json) JSON lines."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if not text.lstrip().startswith("["):
            yield from _jsonl_rows(path, text)
            return
        raise PotstillError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); fix that line"
        ) from None
    for i, row in enumerate(data if isinstance(data, list) else [data], start=1):
        yield f"{path} item {i}", row


def _csv_rows(path: Path) -> Iterable[tuple[str, Any]]:
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB) is too small for documents
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                row.pop(None, None)  # values beyond the header's columns
                yield f"{path}:{reader.line_num}", row
    except UnicodeDecodeError as e:
        raise PotstillError(
            f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it to UTF-8"
        ) from None
    except csv.Error as e:
        raise PotstillError(f"{path}: not valid CSV ({e}); fix the file or use .jsonl") from None
    except OSError as e:
        raise _unreadable(path, e) from None


def _documents(rows: Iterable[tuple[str, Any]], cfg: DataConfig) -> tuple[Kind, list[Document]]:
    """Documents of rows, all of one kind (the first row's)."""
    kind: Kind = "text"
    docs: list[Document] = []
    for kind, doc in _row_documents(rows, cfg):  # noqa: B007 - the last kind is every row's
        docs.append(doc)
    return kind, docs


def _row_documents(
    rows: Iterable[tuple[str, Any]], cfg: DataConfig
) -> Iterator[tuple[Kind, Document]]:
    """Each row's kind and document, as they come; a row of another kind than the first
    is an error."""
    kind: Kind | None = None
    first = ""
    for where, row in rows:
        if not isinstance(row, dict):
            raise PotstillError(
                f"{where}: expected a JSON object with a '{cfg.text_field}' field, "
                f"got {_type_name(row)}; fix or remove that line"
            )
        row_kind, doc = _row_document(row, where, cfg)
        if kind is None:
            kind, first = row_kind, where
        elif row_kind != kind:
            raise PotstillError(
                f"{where}: a {_KIND_WORDS[row_kind]} row, but {first} is a "
                f"{_KIND_WORDS[kind]} row; keep one kind of row per file"
            )
        yield kind, doc


def _row_document(row: dict[str, Any], where: str, cfg: DataConfig) -> tuple[Kind, Document]:
    prompt, response, text = cfg.prompt_field, cfg.response_field, cfg.text_field
    if prompt in row and response in row:
        return "prompt_response", (
            _string(row, prompt, where, "prompt_field"),
            _string(row, response, where, "response_field"),
        )
    if text in row:
        return "text", _string(row, text, where, "text_field")
    fields = ", ".join(row) or "none"
    if prompt in row or response in row:
        have, missing = (prompt, response) if prompt in row else (response, prompt)
        key = "response_field" if missing == response else "prompt_field"
        guess = _guess_field(row, missing, exclude={have})
        raise PotstillError(
            f"{where}: has '{have}' but no '{missing}' field (the row has: {fields}); "
            f"set data.{key}={guess}, or give a '{text}' field for plain text"
        )
    guess = _guess_field(row, text, exclude=set())
    raise PotstillError(
        f"{where}: no '{text}' field (the row has: {fields}); set data.text_field={guess}, "
        f"or data.prompt_field/data.response_field for prompt/response rows"
    )


def _string(row: dict[str, Any], key: str, where: str, cfg_key: str) -> str:
    value = row[key]
    if isinstance(value, str):
        return value
    if value is None:
        raise PotstillError(f"{where}: field '{key}' is empty (null); fill it in or drop that row")
    raise PotstillError(
        f"{where}: field '{key}' is {_type_name(value)}, not a string; "
        f"make it text or point data.{cfg_key} at a text field"
    )


def _guess_field(row: dict[str, Any], wanted: str, exclude: set[str]) -> str:
    """The row's field most likely meant: a close name, else the longest string value."""
    candidates = [k for k, v in row.items() if isinstance(v, str) and k not in exclude]
    close = difflib.get_close_matches(wanted, candidates, n=1, cutoff=0.5)
    if close:
        return close[0]
    if candidates:
        return max(candidates, key=lambda k: len(row[k]))
    return "FIELD"


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", bool: "a boolean", int: "a number"}
    return names.get(type(value), "a number" if isinstance(value, float) else type(value).__name__)


# --- columnar: parquet and datasets ----------------------------------------------------------


def read_parquet(path: Path):  # -> pyarrow.Table
    """A parquet file as a pyarrow table; an unreadable one is one `PotstillError` line."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as e:
        raise PotstillError(
            f"{path} is not a readable parquet file ({e}); re-export it or convert it to .jsonl"
        ) from None


def _table_documents(table, where: str, cfg: DataConfig) -> tuple[Kind, list[Document]]:
    """Documents of a pyarrow table; its columns decide the kind, like a row's fields."""
    if table.num_rows == 0:
        return "text", []
    kind = _table_kind(table.slice(0, 1).to_pylist()[0], where, cfg)
    columns = []
    for cfg_key, field in table_fields(kind, cfg):
        column = table.column(field)
        check_text_column(column.type, lambda: first_null(column), where, field, cfg_key)  # noqa: B023
        columns.append(column.to_pylist())
    if kind == "text":
        return kind, columns[0]
    return kind, list(zip(columns[0], columns[1], strict=True))


def _table_kind(first_row: dict[str, Any], where: str, cfg: DataConfig) -> Kind:
    """A table's kind, from its first row (an error names that row)."""
    return _row_document(first_row, f"{where} row 1", cfg)[0]


def table_fields(kind: Kind, cfg: DataConfig) -> list[tuple[str, str]]:
    """``(config key, column)`` of the columns documents of ``kind`` are read from."""
    if kind == "prompt_response":
        return [("prompt_field", cfg.prompt_field), ("response_field", cfg.response_field)]
    return [("text_field", cfg.text_field)]


def check_text_column(
    column_type, first_null: Callable[[], int | None], where: str, field: str, cfg_key: str
) -> None:
    """A column documents are read from holds text (its pyarrow ``column_type``) and no
    null (``first_null()``: the row index of the first, or None)."""
    import pyarrow as pa

    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise PotstillError(
            f"{where}: column '{field}' holds {column_type}, not text; "
            f"point data.{cfg_key} at a text column"
        )
    row = first_null()
    if row is not None:
        raise PotstillError(
            f"{where} row {row + 1}: field '{field}' is empty (null); fill it in or drop that row"
        )


def first_null(column) -> int | None:
    """The index of a pyarrow column's first null, or None."""
    import pyarrow.compute as pc

    if not column.null_count:
        return None
    return pc.index(pc.is_null(column), True).as_py()


def _is_datasets_folder(path: Path) -> bool:
    if (path / "dataset_dict.json").is_file():
        return True
    return (path / "dataset_info.json").is_file() and (path / "state.json").is_file()


def _read_datasets_folder(path: Path, name: str, cfg: DataConfig) -> Source:
    """A ``save_to_disk`` folder: a Dataset (split by us) or a DatasetDict whose 'train'
    split trains and whose 'test' (else 'validation') split, if any, is held out."""
    import datasets

    loaded = _load_from_disk(path)
    if isinstance(loaded, datasets.Dataset):
        kind, docs = _dataset_documents(loaded, str(path), cfg)
        return Source(name, kind, docs)
    splits = list(loaded)
    train = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
    if train is None:
        raise PotstillError(
            f"{path} has splits {', '.join(splits)} but no 'train' split; "
            "name the training split 'train'"
        )
    kind, docs = _dataset_documents(loaded[train], f"{path}[{train}]", cfg)
    held = next((s for s in ("test", "validation") if s in splits and s != train), None)
    if held is None:
        return Source(name, kind, docs)
    parts = [
        (f"{path}[{train}]", kind, docs),
        (f"{path}[{held}]", *_dataset_documents(loaded[held], f"{path}[{held}]", cfg)),
    ]
    kind = _one_kind(parts, str(path))
    return Source(name, kind, docs, heldout=parts[1][2], heldout_split=held)


def _load_from_disk(path: Path):  # -> datasets.Dataset | datasets.DatasetDict
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:
        raise PotstillError(
            f"{path} looks like a datasets folder but does not load ({e}); "
            "save it again with Dataset.save_to_disk"
        ) from None


def _dataset_documents(ds, where: str, cfg: DataConfig) -> tuple[Kind, list[Document]]:
    return _table_documents(ds.with_format("arrow")[:], where, cfg)


def _one_kind(parts: list[tuple[str, Kind, list[Document]]], where: str) -> Kind:
    """The one kind of documents shared by all non-empty parts (files or splits)."""
    kinds: dict[str, str] = {}
    for part, kind, docs in parts:
        if docs:
            kinds.setdefault(kind, part)
    return one_kind(kinds, where)


def one_kind(kinds: dict[str, str], where: str) -> Kind:
    """The kind of ``kinds`` (each kind found, to the first part that holds it); two kinds
    are an error naming a part of each."""
    if len(kinds) > 1:
        raise PotstillError(
            f"{where}: {kinds['text']} holds text documents but {kinds['prompt_response']} "
            "holds prompt/response examples; keep one kind of data per data.path"
        )
    return next(iter(kinds), "text")  # type: ignore[return-value]
