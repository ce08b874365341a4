"""`potstill label` end to end on a tiny Llama: the table, a rerun that keeps it, the
plain-prompt fallback, and bad input as one line, exit 2, nothing overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tokenizers import normalizers

from potstill.config import load_recipe
from potstill.pipeline.run_dir import prepare_run_dir
from tests.conftest import make_llama, make_tokenizer, run_cli
from tests.synth.test_label import CHAT_TEMPLATE

TEXTS = ["To sleep", "ay, there's the rub", "No more", "The heart-ache", "To die"]


@pytest.fixture(scope="module")
def chat_teacher_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer has a chat template and lowercases ("Yes" == "yes")."""
    folder = tmp_path_factory.mktemp("chat_teacher")
    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.save_pretrained(folder)
    model = make_llama(len(tokenizer), layers=2)
    model.config.max_position_embeddings = 512  # the tiny tokenizer's prompt is long
    model.save_pretrained(folder)
    return folder


def _recipe(tmp_path: Path, teacher: Path) -> Path:
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    path = tmp_path / "label.yaml"
    path.write_text(
        f"""
name: tiny
runs_dir: {tmp_path / "runs"}
teacher: {teacher}
device: cpu
train: {{threads: 1}}
task:
  kind: classify
  labels: [{{name: sleep, description: about sleeping}}, death]
  train: {texts}
  shard_texts: 2
  batch_size: 2
"""
    )
    return path


def test_label_writes_the_table_and_a_rerun_keeps_it(tmp_path, capsys, chat_teacher_dir):
    recipe = _recipe(tmp_path, chat_teacher_dir)
    code, out, err = run_cli("label", str(recipe), capsys=capsys)
    assert code == 0, err
    path = tmp_path / "runs" / "tiny" / "labels.parquet"
    assert out.strip().splitlines()[-1].startswith("labels: 5 texts labelled (5 now, 0 kept)")
    assert "prior sleep=" in out and "0 truncated" in out and str(path) in out
    assert "no chat template" not in err
    table = pq.read_table(path)
    assert table.column("text_id").to_pylist() == [0, 1, 2, 3, 4]
    assert set(table.column("label").to_pylist()) <= {"sleep", "death"}

    code, out, err = run_cli("label", str(recipe), capsys=capsys)
    assert code == 0, err
    assert "5 texts labelled (0 now, 5 kept)" in out
    # What `label` leaves does not block a later `run` without --resume.
    prepare_run_dir(load_recipe(recipe), resume=False)


def test_a_teacher_without_chat_template_gets_a_plain_prompt(tmp_path, capsys, tiny_teacher_dir):
    code, out, err = run_cli("label", str(_recipe(tmp_path, tiny_teacher_dir)), capsys=capsys)
    assert code == 0, err
    assert "no chat template: using a plain" in err
    assert "5 texts labelled" in out


def _bad_texts(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"task.train={path}"


@pytest.mark.parametrize(
    "make_override, expected",
    [
        (lambda p: "task.labels=[sleep]", "has 1 label(s)"),
        (lambda p: "task.kind=lm task.labels=[sleep]", "has 1 label(s)"),
        (lambda p: "task.labels=[sleep,death,sleep]", "lists ['sleep'] more than once"),
        (lambda p: "task.labels=[Sleep,sleep]", "have the same tokens"),
        (lambda p: _bad_texts(p, [{"text": "ok"}, {"text": " "}]), "bad.jsonl:2: field 'text'"),
        (lambda p: _bad_texts(p, [{"body": "ok"}]), "bad.jsonl:1: no 'text' field"),
    ],
    ids=["one-label", "one-label-lm", "duplicate", "collide", "empty-text", "no-text-field"],
)
def test_bad_input_is_one_line_exit_2_and_overwrites_nothing(
    tmp_path, capsys, chat_teacher_dir, make_override, expected
):
    recipe = _recipe(tmp_path, chat_teacher_dir)
    assert run_cli("label", str(recipe), capsys=capsys)[0] == 0
    run_dir = tmp_path / "runs" / "tiny"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}

    code, _out, err = run_cli("label", str(recipe), *make_override(tmp_path).split(), capsys=capsys)
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert expected in line
    assert err.strip().splitlines()[-1] == line and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
