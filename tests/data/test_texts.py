"""Reading texts to label: every format, ids and hashes, and one-line errors."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from potstill.data.texts import read_texts, text_sha256
from potstill.util.errors import PotstillError

ROWS = [{"text": "a fine day", "label": "good"}, {"text": "rain again", "label": "bad"}]


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        keys = list(rows[0])
        path.write_text(
            ",".join(keys) + "\n" + "".join(",".join(r[k] for k in keys) + "\n" for r in rows)
        )
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_rows_with_gold_labels(tmp_path, suffix):
    got = read_texts(_write(tmp_path / f"t{suffix}", ROWS), "text", "label")
    assert got.ids == [0, 1]
    assert got.texts == ["a fine day", "rain again"]
    assert got.labels == ["good", "bad"]
    assert got.sha256s[0] == hashlib.sha256(b"a fine day").hexdigest() == text_sha256("a fine day")


def test_txt_is_one_text_per_non_empty_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first text\n\n  second text  \n")
    got = read_texts(path)
    assert got.texts == ["first text", "second text"] and got.ids == [0, 1]
    assert got.labels is None


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"text": "ok"}\n{"text": "  "}\n', "t.jsonl:2: field 'text' is empty"),
        ('{"text": "ok"}\n{"body": "x"}\n', "t.jsonl:2: no 'text' field (the row has: body)"),
        ('{"text": "ok"}\n{"text": \n', "t.jsonl:2: not valid JSON"),
        ('{"text": null}\n', "t.jsonl:1: field 'text' is empty (null)"),
        ('["text"]\n', "t.jsonl:1: expected an object"),
        ('{"text": "ok"}\n', "no 'label' label field"),
    ],
)
def test_bad_rows_are_one_line_naming_file_and_line(tmp_path, content, expected):
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(PotstillError) as info:
        read_texts(path, "text", "label" if "label" in expected else None)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_missing_field_suggests_the_right_one(tmp_path):
    path = _write(tmp_path / "t.csv", [{"review": "nice"}])
    with pytest.raises(PotstillError, match=r"set task\.text_field=review"):
        read_texts(path)


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(PotstillError, match="not a file"):
        read_texts(tmp_path / "nope.jsonl")
    (tmp_path / "t.xml").write_text("<a/>")
    with pytest.raises(PotstillError, match=r"unsupported file type \.xml"):
        read_texts(tmp_path / "t.xml")
