"""Reading a data path as a stream (`open_source`): exactly `read_source`'s documents, kind,
held-out split and errors, read a file or a batch of rows at a time, and packed into the
same store byte for byte."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import potstill.data as data_module
from potstill.config import DataConfig
from potstill.data import load_data
from potstill.data import stream as stream_module
from potstill.data.packed import build
from potstill.data.sources import read_source
from potstill.data.stream import StreamedSource, open_source
from potstill.util.errors import PotstillError
from tests.data.test_sources import PAIRS, TEXTS, WRITERS, write_csv, write_jsonl, write_parquet


def cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(path=str(path), **kw)


def _same_as_read_source(path: Path, **kw) -> StreamedSource:
    """`open_source` gives what `read_source` gives, and again on a second reading."""
    source, streamed = read_source(path, cfg(path, **kw)), open_source(path, cfg(path, **kw))
    assert (streamed.name, streamed.kind, streamed.heldout_split) == (
        source.name,
        source.kind,
        source.heldout_split,
    )
    for _ in range(2):
        assert list(streamed.documents) == source.documents
        held = None if streamed.heldout is None else list(streamed.heldout)
        assert held == source.heldout
    return streamed


@pytest.mark.parametrize("filename", list(WRITERS))
@pytest.mark.parametrize("kind", ["text", "prompt_response"])
def test_each_format_streams_what_read_source_reads(tmp_path, filename, kind):
    if kind == "text":
        rows = [{"id": str(i), "text": f"{t} {i}"} for i in range(5) for t in TEXTS]
    else:
        rows = [{"prompt": p, "response": f"{r} {i}"} for i in range(5) for p, r in PAIRS]
    path = WRITERS[filename](tmp_path / filename, rows)
    streamed = _same_as_read_source(path)
    assert streamed.kind == kind and len(list(streamed.documents)) == 15


def test_rows_beyond_a_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_module, "_BATCH_ROWS", 4)
    rows = [{"text": f"row {i}"} for i in range(11)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet", row_group_size=3)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "rows.parquet", tmp_path / "saved"):
        assert list(_same_as_read_source(path).documents) == [r["text"] for r in rows]


def test_text_files_and_their_line_endings(tmp_path):
    (tmp_path / "play.txt").write_bytes("\ufeffLine one.\r\nLine two.\rthree\n".encode())
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in ("a\u2028b", "c", "d")]
    (tmp_path / "crlf.jsonl").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r").encode())
    (tmp_path / "cr.jsonl").write_bytes("\r\r".join(lines).encode())
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb")  # a BOM's start alone: no rows
    for name in ("play.txt", "crlf.jsonl", "cr.jsonl", "bom.jsonl"):
        _same_as_read_source(tmp_path / name)
    assert list(open_source(tmp_path / "cr.jsonl", cfg(tmp_path)).documents) == [
        "a\u2028b",
        "c",
        "d",
    ]


def test_a_folder_streams_its_files_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "third"}, {"text": "fourth"}])
    (tmp_path / "d").mkdir()
    write_csv(tmp_path / "d" / "e.csv", [{"text": "fifth"}])
    write_parquet(tmp_path / "d" / "f.parquet", [{"text": "sixth"}])
    (tmp_path / "d" / "g.json").write_text(json.dumps([{"text": "seventh"}]))
    write_jsonl(tmp_path / "h.jsonl", [])  # no rows: no kind
    (tmp_path / ".hidden.txt").write_text("not data")
    datasets.Dataset.from_list([{"other": "not rows"}]).save_to_disk(str(tmp_path / "saved"))
    streamed = _same_as_read_source(tmp_path)
    assert list(streamed.documents)[-1] == "seventh"


def test_a_folder_of_examples_after_an_empty_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [])
    write_jsonl(tmp_path / "b.jsonl", [{"prompt": p, "response": r} for p, r in PAIRS])
    assert _same_as_read_source(tmp_path).kind == "prompt_response"


@pytest.mark.parametrize("held", ["test", "validation", None])
def test_a_dataset_dict_and_its_own_split(tmp_path, held):
    splits = {"train": datasets.Dataset.from_list([{"text": t} for t in TEXTS])}
    if held is not None:
        splits[held] = datasets.Dataset.from_list([{"text": "held out"}])
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    assert _same_as_read_source(tmp_path / "dd").heldout_split == held


# --- errors: the same one line, the same first mistake ------------------------------------------


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _table(path: Path, table: pa.Table, **kw) -> Path:
    pq.write_table(table, path, **kw)
    return path


def _dict(path: Path, splits: dict[str, list[dict]]) -> Path:
    datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
    ).save_to_disk(str(path))
    return path


def _folder(path: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        _write(path / "f" / name, content)
    return path / "f"


ok = '{"text": "ok"}\n'
qa = '{"prompt": "q", "response": "a"}\n'
BAD = {
    "missing": lambda d: d / "nope.jsonl",
    "unsupported": lambda d: _write(d / "data.xlsx", "x"),
    "empty folder": lambda d: _write(d / "f" / "notes.md", "x").parent,
    "bad json late": lambda d: _write(d / "a.jsonl", ok * 50 + "{oops}\n" + ok),
    "json before a bad byte": lambda d: _write(d / "a.jsonl", b"{oops}\n" + ok.encode() + b"\xff"),
    "bad byte after a BOM": lambda d: _write(
        d / "a.jsonl", b"\xef\xbb\xbf" + ok.encode() + b"\xe9"
    ),
    "bad byte ending a line": lambda d: _write(d / "a.jsonl", ok.encode() * 3 + b"\xe2\n" + b"x"),
    "bad byte, no BOM": lambda d: _write(d / "a.jsonl", b"\xef\xbbx"),
    "not an object": lambda d: _write(d / "a.jsonl", ok + "[1, 2]\n"),
    "missing field": lambda d: _write(d / "a.jsonl", ok + '{"id": 3, "body": "words"}\n'),
    "null field": lambda d: _write(d / "a.jsonl", ok + '{"text": null}\n'),
    "rows of two kinds": lambda d: _write(d / "a.jsonl", ok + qa),
    "bad json array": lambda d: _write(d / "a.json", '[\n  {"text": "ok"},\n  {"text": 1,}\n]'),
    "csv not utf-8": lambda d: _write(d / "a.csv", b"text\nok\nok\n\xff\n"),
    "csv missing column": lambda d: _write(d / "a.csv", "title,content\nt,words\n"),
    "not utf-8 txt": lambda d: _write(d / "a.txt", b"caf\xe9"),
    "not parquet": lambda d: _write(d / "a.parquet", "not parquet at all"),
    "parquet number column": lambda d: _table(d / "a.parquet", pa.table({"text": [1, 2]})),
    "parquet dictionary column": lambda d: _table(
        d / "a.parquet", pa.table({"text": pa.array(["a", "b"]).dictionary_encode()})
    ),
    "parquet late null": lambda d: _table(
        d / "a.parquet", pa.table({"text": ["a"] * 7 + [None, "b"]}), row_group_size=3
    ),
    "parquet: prompt null after a response null": lambda d: _table(
        d / "a.parquet",
        pa.table({"prompt": ["q", "q", "q", None], "response": ["a", None, "a", "a"]}),
        row_group_size=2,
    ),
    "parquet: response null only": lambda d: _table(
        d / "a.parquet",
        pa.table({"prompt": ["q", "q", "q"], "response": ["a", "a", None]}),
        row_group_size=2,
    ),
    "parquet: first row null": lambda d: _table(d / "a.parquet", pa.table({"text": [None, "b"]})),
    "folder: two kinds": lambda d: _folder(d, {"a.txt": "plain", "b.jsonl": qa}),
    "folder: two kinds, then a bad row": lambda d: _folder(
        d, {"a.txt": "plain", "b.jsonl": qa, "c.jsonl": "{oops}\n"}
    ),
    "dataset dict: two kinds": lambda d: _dict(
        d / "dd", {"train": [{"text": "t"}], "test": [{"prompt": "q", "response": "a"}]}
    ),
    "dataset dict: no train": lambda d: _dict(d / "dd", {"a": [{"text": "t"}], "b": []}),
    "dataset: null": lambda d: _dict(d / "dd", {"train": [{"text": "t"}, {"text": None}]}),
    "dataset: number": lambda d: _dict(d / "dd", {"train": [{"text": 3}, {"text": 4}]}),
    "datasets folder that does not load": lambda d: _write(d / "dd" / "dataset_dict.json", "{"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_the_same_error_as_read_source(tmp_path, case):
    path = BAD[case](tmp_path)
    with pytest.raises(PotstillError) as expected:
        read_source(path, cfg(path, prompt_field="prompt"))
    with pytest.raises(PotstillError) as got:
        open_source(path, cfg(path, prompt_field="prompt"))
    assert str(got.value) == str(expected.value)
    assert "\n" not in str(got.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file(tmp_path):
    path = _write(tmp_path / "a.jsonl", ok)
    path.chmod(0)
    try:
        with pytest.raises(PotstillError) as expected:
            read_source(path, cfg(path))
        with pytest.raises(PotstillError) as got:
            open_source(path, cfg(path))
    finally:
        path.chmod(0o644)
    assert str(got.value) == str(expected.value)


# --- packing the stream --------------------------------------------------------------------------


def _corpora(tmp_path: Path) -> dict[str, Path]:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and"]
    texts = [" ".join(words[i % 7 :] + words[: i % 5]) + f" {i}" for i in range(60)]
    pairs = [{"prompt": f"Question {i}?", "response": f" Answer {i}."} for i in range(40)]
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": t} for t in texts[:20]])
    write_parquet(folder / "b.parquet", [{"text": t} for t in texts[20:40]])
    (folder / "c.txt").write_text("\n".join(texts[40:]))
    return {
        "jsonl": write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts]),
        "csv": write_csv(tmp_path / "d.csv", [{"text": t} for t in texts]),
        "parquet": write_parquet(tmp_path / "qa.parquet", pairs),
        "folder": folder,
        "one document": _write(tmp_path / "book.txt", " ".join(texts)),
        "dataset dict": _dict(tmp_path / "dd", {"train": pairs[:30], "test": pairs[30:]}),
    }


@pytest.mark.parametrize(
    "which", ["jsonl", "csv", "parquet", "folder", "one document", "dataset dict"]
)
def test_packing_the_stream_writes_the_same_store(tmp_path, tokenizer, which):
    path = _corpora(tmp_path)[which]
    config = cfg(path, block_size=8, heldout=0.1)
    built = {}
    for name, source in (
        ("memory", read_source(path, config)),
        ("stream", open_source(path, config)),
    ):
        folder = tmp_path / name
        folder.mkdir()
        built[name] = (build(folder, source, config, tokenizer), folder)
    (a, folder_a), (b, folder_b) = built["memory"], built["stream"]
    assert (a.fingerprint, a.split, a.train_blocks, a.train_tokens) == (
        b.fingerprint,
        b.split,
        b.train_blocks,
        b.train_tokens,
    )
    names = sorted(p.name for p in folder_a.iterdir())
    assert names == sorted(p.name for p in folder_b.iterdir()) and names
    for name in names:
        assert (folder_a / name).read_bytes() == (folder_b / name).read_bytes()


def test_a_bad_row_found_while_packing_leaves_no_store(tmp_path, tokenizer, monkeypatch):
    """The stream is checked before packing; should a file change between the check and
    the packing, its error is still one line and the store is not written."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"text number {i}"} for i in range(50)])

    def changed(path, cfg):
        source = open_source(path, cfg)
        _write(Path(path), ok * 40 + "{oops}\n")
        return source

    monkeypatch.setattr(data_module, "open_source", changed)
    with pytest.raises(PotstillError, match=r"d.jsonl:41: not valid JSON"):
        load_data(cfg(path, block_size=8), tokenizer, store=tmp_path / "run" / "data")
    assert list((tmp_path / "run").iterdir()) == []  # no store, no temporary folder


# --- memory --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_the_stream_holds_a_row_at_a_time(tmp_path, suffix):
    """Python memory while the documents go by stays near one row (or batch), where
    `read_source` holds them all."""
    rows = [{"text": f"{i} " + "word " * 200} for i in range(8_000)]  # 8 MB of text
    path = (write_jsonl if suffix == "jsonl" else write_parquet)(tmp_path / f"d.{suffix}", rows)
    streamed = open_source(path, cfg(path))
    tracemalloc.start()
    try:
        count = sum(1 for _ in streamed.documents)
        _, stream_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        documents = read_source(path, cfg(path)).documents
        _, memory_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == len(documents) == 8_000
    assert memory_peak > 8_000_000 and stream_peak < memory_peak / 4
