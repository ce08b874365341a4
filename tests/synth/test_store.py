"""labels.parquet on a tiny Llama: its rows are `score_labels`' raw scores and soft labels;
a killed run resumes without scoring a finished shard again; a new calibration is applied
to the kept raw scores without the teacher; a table of other labels is refused (labelled
again when a resumed run asks)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from potstill.data.texts import TextSet, text_sha256
from potstill.synth import store
from potstill.synth.calibration import fit_calibration, matching_source
from potstill.synth.label import (
    LabelSpec,
    apply_calibration,
    build_prompt,
    calibrate,
    score_labels,
)
from potstill.synth.store import label_texts, read_labels
from potstill.util.errors import PotstillError
from tests.conftest import count_label_scoring, make_llama, make_tokenizer
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


@pytest.mark.parametrize("mode", ["none", "content_free"])
def test_rows_are_the_soft_labels_of_score_labels(model, tokenizer, tmp_path, mode, one_thread):
    table = _label(model, tokenizer, tmp_path / "labels.parquet", calibrate=mode)
    prompt = build_prompt(tokenizer, SPEC)
    scores = score_labels(model, prompt, TEXTS.texts, batch_size=4)
    prior = calibrate(model, prompt)
    logprobs = apply_calibration(scores.logprobs, prior) if mode != "none" else scores.logprobs
    expected = np.exp(logprobs) / np.exp(logprobs).sum(axis=1, keepdims=True)

    read = read_labels(tmp_path / "labels.parquet")
    for got in (table, read):
        np.testing.assert_allclose(got.probs, expected, atol=1e-6)
        np.testing.assert_allclose(got.logprobs, scores.logprobs, atol=1e-6)
        np.testing.assert_allclose(got.prior, prior, atol=1e-9)
        assert got.text_ids == TEXTS.ids
        assert got.text_sha256 == [text_sha256(t) for t in TEXTS.texts]
        assert got.label_names == SPEC.names and got.calibration.mode == mode
        assert got.truncated == 0 and got.teacher_sha256 == "abc"
    assert table.scored == len(TEXTS)

    arrow = pq.read_table(tmp_path / "labels.parquet")
    assert arrow.column_names == [
        "text_id",
        "text_sha256",
        "logprobs",
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


def test_auto_chooses_on_the_gold_labels_of_the_rows_present(
    model, tokenizer, tmp_path, one_thread
):
    """``gold`` follows the texts; the rows are calibrated in the table's order, and the
    choice (with each candidate's accuracy) is written with the table and read back."""
    path = tmp_path / "labels.parquet"
    raw = _label(model, tokenizer, path, calibrate="none")
    gold = [i % len(SPEC.names) for i in range(len(TEXTS))]
    table = _label(model, tokenizer, path, calibrate="auto", gold=gold)
    expected = fit_calibration("auto", raw.logprobs, raw.prior, gold=np.array(gold))
    assert table.calibration.chosen_by == expected.chosen_by and len(expected.chosen_by) == 3
    read = read_labels(path)
    assert (read.calibration.mode, read.calibration.chosen_by) == (
        expected.mode,
        expected.chosen_by,
    )
    np.testing.assert_allclose(read.probs, expected.apply(raw.logprobs), atol=1e-12)
    assert _label(model, tokenizer, path, calibrate="auto").calibration.chosen_by == {}


def test_a_new_calibration_recalibrates_the_kept_scores_without_the_teacher(
    model, tokenizer, tmp_path, monkeypatch, one_thread
):
    path = tmp_path / "labels.parquet"
    raw = _label(model, tokenizer, path, calibrate="none")
    calls = count_label_scoring(monkeypatch)
    gold = np.array([0.5, 0.3, 0.2])
    for mode in ("content_free", "prior"):
        table = _label(model, tokenizer, path, calibrate=mode, gold_prior=gold)
        assert calls == [] and table.scored == 0, mode
        expected = fit_calibration(mode, raw.logprobs, raw.prior, gold).apply(raw.logprobs)
        read = read_labels(path)
        np.testing.assert_allclose(read.logprobs, raw.logprobs, atol=0)
        np.testing.assert_allclose(read.probs, expected, atol=1e-12)
        assert read.calibration.mode == mode
        assert not np.allclose(read.probs, raw.probs)
    assert read.calibration.target_from == "train gold labels"
    np.testing.assert_allclose(read.calibration.target, gold)
    np.testing.assert_allclose(read.calibration.source, matching_source(raw.logprobs, gold))
    np.testing.assert_allclose(read.probs.mean(axis=0), gold, atol=1e-8)


def test_a_resumed_run_labels_again_what_another_prompt_made(model, tokenizer, tmp_path):
    path = tmp_path / "labels.parquet"
    _label(model, tokenizer, path)
    other = LabelSpec(["yes", "no"])
    table = _label(model, tokenizer, path, spec=other, replace=True)
    assert table.scored == len(TEXTS) and read_labels(path).label_names == ["yes", "no"]


def test_a_table_of_the_older_format_is_one_line(model, tokenizer, tmp_path):
    import json

    import pyarrow as pa

    path = tmp_path / "labels.parquet"
    _label(model, tokenizer, path)
    arrow = pq.read_table(path)
    meta = json.loads(arrow.schema.metadata[b"potstill.labels"])
    meta["version"] = 1
    old = arrow.replace_schema_metadata({b"potstill.labels": json.dumps(meta).encode()})
    pq.write_table(pa.table(old), path)
    with pytest.raises(PotstillError, match=r"format 1.*delete it to label again"):
        _label(model, tokenizer, path)
    assert _label(model, tokenizer, path, replace=True).scored == len(TEXTS)
