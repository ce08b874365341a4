"""Teaching across tokenizers (`potstill.cache.cross_teach`): a teacher of one tokenizer
fills the cache of blocks cut by another, and a student of that other tokenizer trains
from it with ULD."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from potstill.cache.cross_teach import cross_source, teach_across
from potstill.cache.reader import TeacherCache
from potstill.cache.settings import TeachConfig
from potstill.cache.store import MANIFEST
from potstill.cache.teach import cache_source
from potstill.config import TrainConfig
from potstill.data import load_data
from potstill.data.align import align
from potstill.data.order import scheduled_blocks
from potstill.data.settings import DataConfig
from potstill.data.vocab import shared_ids
from potstill.losses import LossTerm, shared_kl, top_k_signal, uld
from potstill.losses.universal import NO_SIGNAL
from potstill.tasks.causal_lm import CausalLM
from potstill.train.loop import train
from potstill.util.errors import PotstillError
from tests.conftest import make_llama, make_tokenizer


@pytest.fixture(scope="module")
def pair(corpus_file):
    """A teacher of a 300-id tokenizer; data cut by a 120-id one (the student's)."""
    teacher_tokenizer, student_tokenizer = make_tokenizer(300), make_tokenizer(120)
    teacher = make_llama(len(teacher_tokenizer), layers=2).eval()
    with torch.no_grad():  # a sure teacher, far from the students' near-uniform start
        teacher.model.norm.weight.mul_(30.0)
    data = load_data(
        DataConfig(path=str(corpus_file), block_size=16, heldout=0.1), student_tokenizer
    )
    return teacher, teacher_tokenizer, student_tokenizer, data


def teach(pair, directory, plan, **settings):
    teacher, teacher_tokenizer, student_tokenizer, data = pair
    source = cross_source(
        "tiny-teacher",
        teacher_tokenizer,
        student_tokenizer,
        data_fingerprint=data.fingerprint,
        block_size=16,
    )
    cache = teach_across(
        teacher,
        teacher_tokenizer,
        student_tokenizer,
        data.train,
        directory=directory,
        source=source,
        settings=TeachConfig(**{"top_k": 8, "batch_size": 3, "shard_blocks": 4, **settings}),
        temperature=1.0,
        plan=plan,
    )
    return cache, source


def test_aligned_rows_hold_the_teachers_top_k_at_the_paired_position(pair, tmp_path):
    teacher, teacher_tokenizer, student_tokenizer, data = pair
    cache, _ = teach(pair, tmp_path / "cache", [3, 0, 5])
    signal = cache.signal(torch.tensor([3, 0, 5]))  # (3, 15, 8)
    for row, block in enumerate([3, 0, 5]):
        alignment = align(
            student_tokenizer, data.train.input_ids[block].tolist(), teacher_tokenizer
        )
        with torch.no_grad():
            logits = teacher(input_ids=torch.from_numpy(alignment.teacher_ids)[None]).logits
        want = top_k_signal(logits, 8)
        assert 0 < alignment.share < 1
        for i, j in enumerate(alignment.teacher_position.tolist()):
            got = signal.logprobs[row, i]
            if j < 0:
                assert got.max() <= NO_SIGNAL
                continue
            order = signal.ids[row, i].argsort()
            expected = dict(zip(want.ids[0, j].tolist(), want.logprobs[0, j].tolist(), strict=True))
            assert set(signal.ids[row, i].tolist()) == set(expected)
            for slot in order.tolist():  # within the 8-bit codec's half step
                id_ = int(signal.ids[row, i, slot])
                assert abs(float(got[slot]) - expected[id_]) <= 0.0627 + 1e-4


def test_the_manifest_names_the_teachers_tokenizer_and_a_same_vocabulary_recipe_is_refused(
    pair, tmp_path
):
    _, teacher_tokenizer, _, data = pair
    _, source = teach(pair, tmp_path / "cache", [0, 1])
    manifest = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    assert manifest["source"]["teacher_tokenizer_sha256"] == source["teacher_tokenizer_sha256"]
    assert manifest["source"]["vocab_size"] == len(teacher_tokenizer)
    same = cache_source(
        "tiny-teacher", teacher_tokenizer, data_fingerprint=data.fingerprint, block_size=16
    )
    with pytest.raises(PotstillError, match="another tokenizer"):
        TeacherCache.load(tmp_path / "cache", same)
    other = {**source, "teacher_tokenizer_sha256": "0" * 64}
    with pytest.raises(PotstillError, match="teacher tokenizer"):
        TeacherCache.load(tmp_path / "cache", other)


def test_a_sampled_cache_is_refused(pair, tmp_path):
    with pytest.raises(ValueError, match="top k only"):
        teach(pair, tmp_path / "cache", [0], samples=16)


@pytest.mark.parametrize("loss", ["uld", "shared_kl"])
def test_a_student_of_the_other_tokenizer_trains_from_it(pair, tmp_path, one_thread, loss):
    _, teacher_tokenizer, student_tokenizer, data = pair
    cfg = TrainConfig(steps=30, batch_size=2, warmup=1, lr=3e-2, eval_every=None, clip=10.0)
    plan = scheduled_blocks(len(data.train), micro_batches=30, batch_size=2, seed=0)
    cache, _ = teach(pair, tmp_path / "cache", plan)
    if loss == "shared_kl":  # the teacher's ids read as the student's of the same bytes
        mapping = shared_ids(teacher_tokenizer, student_tokenizer, cache.manifest.vocab_size)
        cache.read_ids_as(torch.from_numpy(mapping))
    student = make_llama(len(student_tokenizer), layers=1, seed=1)
    seen = torch.tensor(sorted(set(plan)))
    fn = {"uld": uld, "shared_kl": shared_kl}[loss]

    def distance() -> float:  # the student's loss from the cache over every taught block
        with torch.no_grad():
            logits = student(input_ids=data.train.input_ids[seen]).logits[:, :-1]
        return fn(logits, cache.signal(seen)).item()

    before = distance()
    train(
        student,
        data.train,
        CausalLM([LossTerm(loss), LossTerm("cross_entropy", weight=0.1)]),
        cfg,
        teacher=cache,
        name="student",
        checkpoint_dir=tmp_path / "ckpt",
        metrics_path=tmp_path / "metrics.jsonl",
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if loss in r]
    assert len(steps) == 30
    assert all(np.isfinite(r[loss]) and r[loss] > 0 for r in steps)
    assert before > 0.5  # the sure teacher is far from the student's start
    assert distance() < 0.8 * before  # and the student learns it


def test_read_ids_as_hands_out_the_mapped_ids_and_refuses_a_bad_mapping(pair, tmp_path):
    _, teacher_tokenizer, student_tokenizer, _ = pair
    cache, _ = teach(pair, tmp_path / "cache", [0, 2])
    raw = cache.signal(torch.tensor([2, 0])).ids.long()
    mapping = shared_ids(teacher_tokenizer, student_tokenizer, cache.manifest.vocab_size)
    cache.read_ids_as(torch.from_numpy(mapping))
    assert torch.equal(cache.signal(torch.tensor([2, 0])).ids, torch.from_numpy(mapping)[raw])
    for bad in (torch.from_numpy(mapping).int(), torch.zeros(3, dtype=torch.long)):
        with pytest.raises(ValueError, match="one entry per stored id"):
            cache.read_ids_as(bad)
    with pytest.raises(ValueError, match="ids or -1"):
        cache.read_ids_as(torch.full((cache.manifest.vocab_size,), -2))
