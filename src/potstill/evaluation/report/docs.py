"""Where the documentation explains a report: its task kind's page on the docs site.

The site is built from the repository's ``docs/`` with MkDocs (``mkdocs.yml`` names the
same address as its ``site_url``; a test keeps the two equal and every page present).

>>> docs_page("classify")
'https://potstill.readthedocs.io/en/latest/tasks/classify/'
"""

from __future__ import annotations

from potstill.evaluation.report.schema import Kind

DOCS_URL = "https://potstill.readthedocs.io/en/latest/"
# The page (under docs/) that explains each kind's report.
KIND_PAGES: dict[Kind, str] = {
    "lm": "tasks/lm/",
    "classify": "tasks/classify/",
    "reason": "tasks/reason/",
    "context": "tasks/context/",
}


def docs_page(kind: Kind) -> str:
    """The address of the docs page for reports of ``kind``."""
    return DOCS_URL + KIND_PAGES[kind]
