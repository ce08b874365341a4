"""report.html: self-contained, escaped, and rendered by a real headless browser."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest

from potstill.evaluate.report import build_report, write_report

CHROMIUM = Path("/usr/bin/chromium")
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


def plausible_report(name: str = "shakespeare-smollm2") -> dict:
    """Numbers shaped like a real default run (SmolLM2-135M teacher, 6-layer student)."""

    def model(params, ppl, tps, agreement=None, train_seconds=None):
        entry = {
            "ref": "bundled:smollm2-135m-instruct" if agreement is None else "runs/x",
            "params": params,
            "size_bytes": params * 4,
            "perplexity": ppl,
            "loss": math.log(ppl),
            "tokens_per_second": tps,
        }
        if agreement is not None:
            entry["agreement"] = {"top1": agreement[0], "kl": agreement[1]}
            entry["train_seconds"] = train_seconds
        return entry

    return build_report(
        run={"name": name, "wall_seconds": 1830.0, "device": "cpu", "threads": 2},
        data={"name": "shakespeare", "train_tokens": 2_400_000, "heldout_tokens": 120_000},
        recipe={
            "loss": [
                {"loss": "forward_kl", "weight": 0.5, "temperature": 2.0},
                {"loss": "cross_entropy", "weight": 0.5},
            ],
            "steps": 300,
            "batch_size": 8,
            "block_size": 256,
            "lr": 3e-4,
        },
        models={
            "teacher": model(134_515_008, 18.7, 21.3),
            "student": model(49_600_000, 31.2, 52.8, (0.58, 0.61), 640.0),
            "baseline": model(49_600_000, 44.9, 53.1, (0.41, 1.37), 410.0),
        },
    )


def plausible_curves() -> dict[str, list[dict]]:
    student, baseline = [], []
    for step in range(0, 300, 5):
        decay = math.exp(-step / 80)
        ce = 3.4 + 2.5 * decay + 0.08 * math.sin(step)
        kl = 0.6 + 1.8 * decay
        student.append(
            {"step": step, "loss": 0.5 * ce + 0.5 * kl, "cross_entropy": ce, "forward_kl": kl}
        )
        baseline.append({"step": step, "loss": 3.8 + 2.3 * decay + 0.08 * math.cos(step)})
    for rows, level in ((student, 3.45), (baseline, 3.8)):
        for row in rows[::12]:
            row["heldout_loss"] = level + 2.0 * math.exp(-row["step"] / 80)
    return {"student": student, "baseline": baseline}


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
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page
    assert '<table id="metrics">' in page and "<td>student</td>" in page


def test_strings_are_escaped(tmp_path):
    report = plausible_report(name='<script>alert("run")</script> & co')
    report["models"]['<img src=x onerror="alert(1)">'] = report["models"].pop("baseline")
    page = write_report(tmp_path, report)["report.html"].read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;run&quot;)&lt;/script&gt; &amp; co" in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs headless Chromium at /usr/bin/chromium (apt install chromium)",
)
def test_page_renders_in_chromium(written, tmp_path):
    from PIL import Image

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
    with Image.open(screenshot) as image:
        assert image.size == (1200, 2400)
        grey = image.convert("L")
        low, high = grey.getextrema()
        dark = sum(grey.histogram()[:200])
    assert high - low > 100, "screenshot is blank"
    assert dark > 0.01 * 1200 * 2400, "screenshot has almost nothing drawn on it"
