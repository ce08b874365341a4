"""The documentation site builds with no warning (``mkdocs build --strict``: a broken link
or a missing page fails) and renders in a real headless browser."""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chromium import assert_drawn, needs_chromium, run_chromium

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def served(site) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_every_nav_page_is_built(site):
    for page in ["index.html", "tasks/classify/index.html", "reference/recipe/index.html"]:
        assert (site / page).is_file(), page
    recipe = (site / "reference/recipe/index.html").read_text()
    assert "train.lr" in recipe and "budget_minutes" in recipe
    api = (site / "reference/python/index.html").read_text()
    assert "load_recipe" in api and "Report" in api  # mkdocstrings rendered the docstrings


@needs_chromium
@pytest.mark.parametrize(
    ("page", "text"),
    [("", "Quick start"), ("tasks/classify/", "How the labels are made")],
    ids=["home", "classify"],
)
def test_a_page_renders_in_chromium(served, page, text, tmp_path):
    dom = run_chromium(["--dump-dom", served + page], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert text in dom.stdout and "Recipe keys" in dom.stdout  # the page, and the nav

    screenshot = tmp_path / "page.png"
    shot = run_chromium(
        [f"--screenshot={screenshot}", "--window-size=1280,1000", served + page],
        tmp_path / "profile-shot",
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    assert_drawn(screenshot, (1280, 1000))
