"""A run across tokenizers (`potstill.pipeline.cross`): a tiny teacher of one tokenizer
teaches a student of another through the real command line, and what such a run cannot
do is refused in one line before anything is taught."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from potstill.cache.store import MANIFEST
from potstill.config import load_recipe
from potstill.models.load import tokenizer_sha256
from potstill.pipeline import run
from potstill.util.errors import PotstillError
from tests.conftest import llama_folder, make_tokenizer, run_cli, tiny_recipe


@pytest.fixture(autouse=True)
def restore_threads():
    """The recipe sets torch's thread count; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A tiny student whose tokenizer (fewer merges) splits the text finer than the teacher's."""
    return llama_folder(tmp_path_factory.mktemp("student"), make_tokenizer(120), layers=1)


def across(tmp_path, teacher_dir, student_dir, corpus, **changes) -> dict:
    recipe = tiny_recipe(tmp_path / "runs", teacher_dir, corpus, steps=3)
    recipe["student"] = {"model": str(student_dir)}
    recipe["loss"] = [{"loss": "uld"}, {"loss": "cross_entropy"}]
    recipe["teach"] = {"top_k": 8}
    for key, value in changes.items():
        recipe[key] = value
    return recipe


@pytest.mark.parametrize("loss", ["uld", "shared_kl"])
def test_a_run_across_tokenizers_teaches_trains_and_reports(
    tmp_path, tiny_teacher_dir, tiny_tokenizer, student_dir, corpus_file, capsys, loss
):
    recipe = across(tmp_path, tiny_teacher_dir, student_dir, corpus_file)
    recipe["loss"] = [{"loss": loss}, {"loss": "cross_entropy"}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = run_cli("run", str(path), capsys=capsys)
    assert code == 0, err
    folder = tmp_path / "runs" / "tiny"
    manifest = json.loads((folder / "cache" / MANIFEST).read_text())
    source = manifest["source"]
    assert source["teacher_tokenizer_sha256"] == tokenizer_sha256(tiny_tokenizer)
    assert source["tokenizer_sha256"] != source["teacher_tokenizer_sha256"]
    assert source["vocab_size"] == len(tiny_tokenizer)
    assert "aligned with the teacher's tokenization" in err
    report = json.loads((folder / "report.json").read_text())
    assert {"student", "baseline"} <= set(report["models"])
    assert "teacher" not in report["models"]  # it reads other tokens: not scored beside them
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert any(loss in row for row in rows if row.get("model") == "student")
    assert ("of the same bytes" in err) == (loss == "shared_kl")
    student = json.loads((folder / "student" / "config.json").read_text())
    assert student["vocab_size"] == len(make_tokenizer(120)) != len(tiny_tokenizer)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"loss": [{"loss": "forward_kl"}, {"loss": "cross_entropy"}]}, ["forward_kl", "uld"]),
        ({"teach": {"enabled": False}}, ["teach.enabled=true"]),
        ({"teach": {"top_k": 0, "samples": 16}}, ["teach.samples=0"]),
        ({"budget_minutes": 5}, ["budget_minutes=null"]),
        ({"train": {"steps": 3, "curriculum": "easy_first"}}, ["train.curriculum=none"]),
    ],
)
def test_what_a_run_across_tokenizers_cannot_do_is_refused_first(
    tmp_path, tiny_teacher_dir, student_dir, corpus_file, change, words
):
    recipe = across(tmp_path, tiny_teacher_dir, student_dir, corpus_file, **change)
    with pytest.raises(PotstillError) as error:
        run(load_recipe(recipe))
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    assert not (tmp_path / "runs" / "tiny" / "cache").exists()
