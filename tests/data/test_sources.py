"""Reading each supported format into documents, and every user error it reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from potstill.config import DataConfig
from potstill.data import load_data
from potstill.data.sources import SUPPORTED, read_source
from potstill.util.errors import PotstillError

TEXTS = [
    "To be, or not to be, that is the question.",
    'She said "hello, world"\nand left; a comma, a quote.',
    "Now is the winter of our discontent.",
]
PAIRS = [
    ("What is the capital of France?", " Paris."),
    ("How many legs has a cat?", " Four."),
    ("Who wrote Hamlet?", " Shakespeare."),
]


def cfg(path: Path | None = None, **kw) -> DataConfig:
    return DataConfig(path=None if path is None else str(path), **kw)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_json(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows))
    return path


def write_dataset(path: Path, rows: list[dict]) -> Path:
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


WRITERS = {
    "data.jsonl": write_jsonl,
    "data.csv": write_csv,
    "data.parquet": write_parquet,
    "data.json": write_json,
    "saved_dataset": write_dataset,
}


@pytest.mark.parametrize("filename", list(WRITERS))
def test_text_rows_round_trip(tmp_path, filename):
    rows = [{"id": str(i), "body": t} for i, t in enumerate(TEXTS)]
    path = WRITERS[filename](tmp_path / filename, rows)
    source = read_source(path, cfg(path, text_field="body"))
    assert (source.name, source.kind, source.documents) == (filename, "text", TEXTS)


@pytest.mark.parametrize("filename", list(WRITERS))
def test_prompt_response_rows_round_trip(tmp_path, filename):
    rows = [{"prompt": p, "response": r, "text": "ignored"} for p, r in PAIRS]
    path = WRITERS[filename](tmp_path / filename, rows)
    source = read_source(path, cfg(path))
    assert source.kind == "prompt_response"
    assert source.documents == PAIRS


def test_txt_file_is_one_document(tmp_path):
    path = tmp_path / "play.txt"
    path.write_bytes("\ufeffLine one.\r\nLine two.\r\n".encode())
    source = read_source(path, cfg(path))
    assert source.documents == ["Line one.\nLine two.\n"]  # BOM dropped, newlines unified


def test_folder_reads_supported_files_sorted_by_name(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "third"}, {"text": "fourth"}])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "e.txt").write_text("fifth")
    (tmp_path / "notes.md").write_text("not data")
    (tmp_path / ".hidden.txt").write_text("not data either")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("not data")
    write_dataset(tmp_path / "saved", [{"other": "its .json files are not rows"}])
    source = read_source(tmp_path, cfg(tmp_path))
    assert source.documents == ["first", "second", "third", "fourth", "fifth"]


def test_jsonl_line_separators_inside_strings(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n")
    assert read_source(path, cfg(path)).documents == ["a\u2028b"]


def test_dataset_dict_uses_its_test_split_as_heldout(tmp_path, tokenizer):
    train = [{"text": f"{t} number {i}"} for i in range(6) for t in TEXTS]
    test = [{"text": "A held-out line, never seen in training."}]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}
    ).save_to_disk(str(tmp_path / "dd"))
    source = read_source(tmp_path / "dd", cfg())
    assert source.documents == [r["text"] for r in train]
    assert (source.heldout, source.heldout_split) == ([test[0]["text"]], "test")

    data = load_data(cfg(tmp_path / "dd", block_size=8), tokenizer)
    held = tokenizer(test[0]["text"], add_special_tokens=False)["input_ids"]
    n = len(data.heldout)
    assert data.heldout.input_ids.flatten().tolist() == [*held, tokenizer.eos_token_id][: n * 8]
    assert "'test' split" in data.split


def test_dataset_dict_validation_split_when_no_test(tmp_path):
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"text": "a"}]),
            "validation": datasets.Dataset.from_list([{"text": "b"}]),
        }
    ).save_to_disk(str(tmp_path / "dd"))
    source = read_source(tmp_path / "dd", cfg())
    assert (source.documents, source.heldout, source.heldout_split) == (["a"], ["b"], "validation")


# --- errors --------------------------------------------------------------------------------


def error(path: Path, **kw) -> str:
    with pytest.raises(PotstillError) as info:
        read_source(path, cfg(path, **kw))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_path(tmp_path):
    assert "does not exist" in error(tmp_path / "nope.jsonl")


def test_unsupported_extension_lists_supported(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    message = error(path)
    assert ".xlsx" in message and all(ext in message for ext in SUPPORTED)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "ok"}\n{"text": oops}\n')
    message = error(path)
    assert f"{path}:4: not valid JSON" in message and "fix or remove that line" in message


def test_malformed_json_array_names_the_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"text": "ok"},\n  {"text": "ok",}\n]\n')
    assert f"{path}:3: not valid JSON" in error(path)


def test_missing_field_suggests_the_fix(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "ok"}, {"id": 3, "body": "words"}])
    message = error(path)
    assert f"{path}:2" in message
    assert "'text'" in message and "id, body" in message
    assert "data.text_field=body" in message


def test_missing_response_field_suggests_the_fix(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "q", "answer": "a"}])
    message = error(path)
    assert "no 'response' field" in message and "data.response_field=answer" in message


def test_csv_missing_column(tmp_path):
    path = write_csv(tmp_path / "rows.csv", [{"title": "t", "content": "words"}])
    message = error(path)
    assert f"{path}:2" in message and "data.text_field=content" in message


def test_non_string_value(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "ok"}, {"text": 42}])
    message = error(path)
    assert f"{path}:2" in message and "not a string" in message


def test_non_object_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('["a list", "not an object"]\n')
    assert f"{path}:1: expected a JSON object" in error(path)


def test_parquet_non_text_column(tmp_path):
    path = write_parquet(tmp_path / "rows.parquet", [{"text": 1}, {"text": 2}])
    assert "not a string" in error(path)


def test_parquet_null_value_names_the_row(tmp_path):
    path = write_parquet(tmp_path / "rows.parquet", [{"text": "a"}, {"text": None}])
    assert "row 2" in error(path) and "null" in error(path)


def test_file_mixing_kinds(tmp_path):
    rows = [{"prompt": "q", "response": "a"}, {"text": "plain"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    message = error(path)
    assert f"{path}:2" in message and "one kind" in message


def test_folder_mixing_kinds(tmp_path):
    (tmp_path / "a.txt").write_text("plain text")
    write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "response": "a"}])
    message = error(tmp_path)
    assert "a.txt" in message and "b.jsonl" in message and "one kind" in message


def test_folder_without_data_files(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    assert "no data files" in error(tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    assert "not UTF-8" in error(path)
