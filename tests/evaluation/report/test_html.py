"""report.html: self-contained, escaped, and rendered by a real headless browser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from potstill.evaluation.report import write_report
from potstill.evaluation.report.docs import docs_page
from tests.chromium import assert_drawn, needs_chromium, run_chromium
from tests.evaluation.report.numbers import plausible_curves, plausible_report


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    run_dir = tmp_path_factory.mktemp("run")
    return write_report(run_dir, plausible_report(), plausible_curves())


def test_page_is_self_contained(written):
    page = written["report.html"].read_text()
    images = re.findall(r"<img [^>]*>", page)
    assert len(images) == 3 == sum(key.startswith("plots/") for key in written)
    for image in images:
        assert 'src="data:image/png;base64,' in image
        assert re.search(r'alt="[^"]{20,}"', image)
    # Nothing is loaded from outside; the one outside address is a link to the docs.
    link = f'<a href="{docs_page("lm")}" rel="noreferrer">'
    assert page.count(link) == 1
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.replace(link, ""))
    assert "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page
    assert '<table id="metrics">' in page
    cells = ["student", "49.6M", "198", "31.20", "58.0%", "0.610", "52.8"]
    student_row = "".join(f"<td>{cell}</td>" for cell in cells)
    assert f"<tr>{student_row}</tr>" in page
    assert '<div class="label">gap closed</div><div class="value">42%</div>' in page
    assert "<title>potstill report: shakespeare-smollm2</title>" in page
    assert "<td>loss</td><td>0.5 × forward_kl (temperature=2.0) + 0.5 × cross_entropy</td>" in page


def test_strings_are_escaped(tmp_path):
    report = plausible_report(name='<script>alert("run")</script> & co')
    report.models['<img src=x onerror="alert(1)">'] = report.models.pop("baseline")
    page = write_report(tmp_path, report)["report.html"].read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;run&quot;)&lt;/script&gt; &amp; co" in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


@needs_chromium
def test_page_renders_in_chromium(written, tmp_path):
    url = written["report.html"].resolve().as_uri()
    dom = run_chromium(["--dump-dom", url], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<table id="metrics">' in dom.stdout
    assert len(re.findall(r"<img ", dom.stdout)) == 3
    loaded = re.search(r'<body[^>]*data-loaded="(\d+)"', dom.stdout)
    assert loaded and loaded.group(1) == "3", "not every plot decoded in the browser"

    screenshot = tmp_path / "report.png"
    shot = run_chromium(
        [f"--screenshot={screenshot}", "--window-size=1200,2400", url], tmp_path / "profile-shot"
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    assert_drawn(screenshot, (1200, 2400))
