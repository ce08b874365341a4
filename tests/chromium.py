"""Debian's headless Chromium for the tests that look at a rendered page (the HTML report,
the docs site): start it, take a screenshot, judge whether anything is drawn."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google's hosts,
# which this machine's closed network refuses.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs headless Chromium at /usr/bin/chromium (apt install chromium)",
)


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def assert_drawn(screenshot: Path, size: tuple[int, int]) -> None:
    """The screenshot has the asked size, contrast, and more than a speck of ink."""
    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.size == size
        grey = image.convert("L")
        low, high = grey.getextrema()
        dark = sum(grey.histogram()[:200])
    assert high - low > 100, "screenshot is blank"
    assert dark > 0.01 * size[0] * size[1], "screenshot has almost nothing drawn on it"
