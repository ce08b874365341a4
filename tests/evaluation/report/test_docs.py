"""The report's link to the docs: the address the site is published at, and a page there
for every task kind."""

from __future__ import annotations

from pathlib import Path

import yaml

from potstill.evaluation.report.docs import DOCS_URL, KIND_PAGES, docs_page
from potstill.evaluation.report.markdown import render_markdown
from potstill.evaluation.report.schema import KINDS
from tests.evaluation.report.numbers import plausible_report

ROOT = Path(__file__).resolve().parents[3]


def test_every_kind_links_a_page_of_the_site():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["site_url"] == DOCS_URL
    assert set(KIND_PAGES) == set(KINDS)
    for kind, page in KIND_PAGES.items():
        assert (ROOT / "docs" / f"{page.rstrip('/')}.md").is_file(), kind
        assert docs_page(kind) == DOCS_URL + page


def test_report_md_names_the_page():
    assert docs_page("lm") in render_markdown(plausible_report())
