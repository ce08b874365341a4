"""labels.parquet on a tiny Llama: its rows are `score_labels`' soft labels; a killed run
resumes without scoring a finished shard again; a table of other labels is refused."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from potstill.data.texts import TextSet, text_sha256
from potstill.synth import store
from potstill.synth.label import (
    LabelSpec,
    apply_calibration,
    build_prompt,
    calibrate,
    score_labels,
)
from potstill.synth.store import label_texts, read_labels
from potstill.util.errors import PotstillError
from tests.conftest import make_llama, make_tokenizer
from tests.synth.test_label import CHAT_TEMPLATE, SPEC

TEXTS = TextSet(
    "t",
    list(range(7)),
    [
        "To sleep",
        "Whether 'tis nobler in the mind to suffer",
        "ay",
        "The heart-ache and the thousand natural shocks",
        "No more; and by a sleep to say we end",
        "Devoutly to be wish'd",
        "To die, to sleep",
    ],
)


@pytest.fixture(scope="module")
def model():
    model = make_llama(len(make_tokenizer()), layers=2, seed=0)
    model.config.max_position_embeddings = 512  # the tiny tokenizer's prompt is long
    return model


@pytest.fixture(scope="module")
def tokenizer():
    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _label(model, tokenizer, path, spec=SPEC, texts=TEXTS, **kwargs):
    kwargs = {"shard_texts": 3, "batch_size": 2, "log": lambda _: None, **kwargs}
    sha = kwargs.pop("teacher_sha256", "abc")
    return label_texts(model, tokenizer, "tiny", sha, texts, spec, path=path, **kwargs)


@pytest.mark.parametrize("calibrated", [False, True], ids=["raw", "calibrated"])
def test_rows_are_the_soft_labels_of_score_labels(
    model, tokenizer, tmp_path, calibrated, one_thread
):
    table = _label(model, tokenizer, tmp_path / "labels.parquet", calibrate=calibrated)
    prompt = build_prompt(tokenizer, SPEC)
    scores = score_labels(model, prompt, TEXTS.texts, batch_size=4)
    prior = calibrate(model, prompt)
    logprobs = apply_calibration(scores.logprobs, prior) if calibrated else scores.logprobs
    expected = np.exp(logprobs) / np.exp(logprobs).sum(axis=1, keepdims=True)

    read = read_labels(tmp_path / "labels.parquet")
    for got in (table, read):
        np.testing.assert_allclose(got.probs, expected, atol=1e-6)
        np.testing.assert_allclose(got.prior, prior, atol=1e-9)
        assert got.text_ids == TEXTS.ids
        assert got.text_sha256 == [text_sha256(t) for t in TEXTS.texts]
        assert got.label_names == SPEC.names and got.calibrated == calibrated
        assert got.truncated == 0 and got.teacher_sha256 == "abc"
    assert table.scored == len(TEXTS)

    arrow = pq.read_table(tmp_path / "labels.parquet")
    assert arrow.column_names == [
        "text_id",
        "text_sha256",
        "probs",
        "label",
        "truncated",
        "teacher",
        "teacher_sha256",
    ]
    names = [SPEC.names[i] for i in expected.argmax(axis=1)]
    assert arrow.column("label").to_pylist() == names
    assert set(arrow.column("teacher").to_pylist()) == {"tiny"}


def test_a_killed_run_resumes_without_scoring_finished_shards(
    model, tokenizer, tmp_path, monkeypatch, one_thread
):
    whole = _label(model, tokenizer, tmp_path / "whole.parquet")
    scored: list[str] = []
    real = store.score_labels

    def dies_after_one_shard(model, prompt, texts, **kwargs):
        if scored:
            raise KeyboardInterrupt
        scored.extend(texts)
        return real(model, prompt, texts, **kwargs)

    path = tmp_path / "labels.parquet"
    monkeypatch.setattr(store, "score_labels", dies_after_one_shard)
    with pytest.raises(KeyboardInterrupt):
        _label(model, tokenizer, path)
    assert read_labels(path).text_ids == [0, 1, 2]  # the first shard was kept

    scored.clear()

    def counting(model, prompt, texts, **kwargs):
        scored.extend(texts)
        return real(model, prompt, texts, **kwargs)

    monkeypatch.setattr(store, "score_labels", counting)
    resumed = _label(model, tokenizer, path)
    assert scored == TEXTS.texts[3:]
    assert resumed.scored == 4
    final = read_labels(path)
    assert final.text_ids == whole.text_ids and final.text_sha256 == whole.text_sha256
    np.testing.assert_allclose(final.probs, whole.probs, atol=1e-9)

    scored.clear()  # a third run has nothing left to score
    again = _label(model, tokenizer, path)
    assert scored == [] and again.scored == 0 and len(again) == len(TEXTS)


def test_a_changed_text_is_scored_again(model, tokenizer, tmp_path, one_thread):
    path = tmp_path / "labels.parquet"
    _label(model, tokenizer, path)
    texts = TextSet("t", TEXTS.ids, [*TEXTS.texts[:-1], "To be, or not to be"])
    table = _label(model, tokenizer, path, texts=texts)
    assert table.scored == 1
    assert read_labels(path).text_sha256[-1] == text_sha256("To be, or not to be")


def test_a_table_of_other_labels_or_teacher_is_refused(model, tokenizer, tmp_path, one_thread):
    path = tmp_path / "labels.parquet"
    _label(model, tokenizer, path)
    before = path.read_bytes()
    with pytest.raises(PotstillError, match=r"other labels.*set name=NEW"):
        _label(model, tokenizer, path, spec=LabelSpec(["yes", "no"]))
    with pytest.raises(PotstillError, match=r"another teacher.*set name=NEW"):
        _label(model, tokenizer, path, teacher_sha256="def")
    assert path.read_bytes() == before


def test_truncated_texts_are_counted(model, tokenizer, tmp_path, one_thread):
    prompt = build_prompt(tokenizer, SPEC)
    limit = len(prompt.prefix_ids) + len(prompt.tail_ids) + max(map(len, prompt.label_ids)) + 3
    table = _label(model, tokenizer, tmp_path / "labels.parquet", max_length=limit)
    expected = score_labels(model, prompt, TEXTS.texts, max_length=limit).truncated
    assert 0 < table.truncated == expected
    assert read_labels(tmp_path / "labels.parquet").truncated == expected
