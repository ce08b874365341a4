"""The generations store: whole shards only, resumed from the file and the shards, other
settings refused with the keys that differ."""

from __future__ import annotations

import json

import pytest

from potstill.synth.generations import (
    GenerationsStore,
    read_generations,
    settings_fingerprint,
)
from potstill.util.errors import PotstillError

SETTINGS = {"format": 1, "teacher": "t", "temperature": 0.7, "seed": 0}


def row(prompt: str, sample: int, response: str = "r") -> dict:
    return {"prompt_sha256": prompt, "sample": sample, "response": response}


def test_shards_then_the_whole_file(tmp_path):
    store = GenerationsStore(tmp_path)
    store.check(SETTINGS)  # nothing there yet
    store.begin(SETTINGS)
    first = store.write_shard([row("a", 0), row("a", 1)])
    second = store.write_shard([row("b", 0)])
    assert [first.name, second.name] == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert set(store.done()) == {("a", 0), ("a", 1), ("b", 0)}
    rows = [row("a", 0), row("a", 1), row("b", 0)]
    store.finish(rows, {"settings": SETTINGS})
    assert read_generations(store.path) == rows
    assert json.loads(store.manifest_path.read_text())["settings"] == SETTINGS
    assert not store.parts.exists()
    assert set(store.done()) == {("a", 0), ("a", 1), ("b", 0)}  # read back from the file


def test_a_killed_writer_leaves_nothing_that_reads_as_a_row(tmp_path):
    store = GenerationsStore(tmp_path)
    store.begin(SETTINGS)
    store.write_shard([row("a", 0)])
    # A writer killed mid-write leaves its temporary file: half a row, never renamed.
    (store.parts / ".shard-00001.jsonl.x1y2.tmp").write_text('{"prompt_sha256": "b", "sam')
    assert list(store.done()) == [("a", 0)]
    assert store.write_shard([row("b", 0)]).name == "shard-00001.jsonl"


def test_newer_shard_rows_win_over_the_file(tmp_path):
    store = GenerationsStore(tmp_path)
    store.finish([row("a", 0, "old")], {"settings": SETTINGS})
    store.begin(SETTINGS)
    store.write_shard([row("a", 0, "new")])
    assert store.done()[("a", 0)]["response"] == "new"


def test_other_settings_are_refused_naming_what_changed(tmp_path):
    store = GenerationsStore(tmp_path)
    store.begin(SETTINGS)
    store.write_shard([row("a", 0)])
    store.check(dict(SETTINGS))
    with pytest.raises(PotstillError) as error:
        store.check({**SETTINGS, "temperature": 0.9})
    assert "temperature: 0.7 -> 0.9" in str(error.value) and "name=NEW" in str(error.value)
    store.finish([row("a", 0)], {"settings": SETTINGS})
    with pytest.raises(PotstillError, match="seed: 0 -> 1"):
        store.check({**SETTINGS, "seed": 1})


def test_a_file_without_its_manifest_or_with_a_broken_row_is_refused(tmp_path):
    store = GenerationsStore(tmp_path)
    store.path.write_text(json.dumps(row("a", 0)) + "\n")
    with pytest.raises(PotstillError, match=r"no generations\.manifest\.json"):
        store.check(SETTINGS)
    store.path.write_text(json.dumps(row("a", 0)) + "\n" + '{"prompt_sha256": "b"}\n')
    with pytest.raises(PotstillError, match="line 2 is not a generation row"):
        store.done()


def test_the_fingerprint_ignores_key_order():
    shuffled = dict(reversed(list(SETTINGS.items())))
    assert settings_fingerprint(shuffled) == settings_fingerprint(SETTINGS)
    assert settings_fingerprint({**SETTINGS, "seed": 1}) != settings_fingerprint(SETTINGS)
