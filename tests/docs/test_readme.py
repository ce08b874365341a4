"""The README: short, the two commands first, and its table the measured default run's."""

from __future__ import annotations

import re
from pathlib import Path

from potstill.evaluation.report import Report

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def first_block(text: str) -> str:
    return re.search(r"```bash\n(.*?)```", text, re.S).group(1)


def test_the_readme_is_short_and_starts_with_the_two_commands():
    assert len(README.splitlines()) <= 200
    commands = first_block(README)
    assert README.index("```bash") < README.index("\n## ")  # before any section
    assert "bash scripts/setup.sh && .venv/bin/potstill run" in commands
    assert 'bash scripts/setup.sh --test && .venv/bin/pytest -m "slow or not slow"' in commands
    assert commands == first_block((ROOT / "docs" / "index.md").read_text())  # one quick start
    ci = (ROOT / ".ci" / "run").read_text()
    assert '.venv/bin/pytest -m "slow or not slow"' in ci  # CI runs the README's test command


def test_the_default_table_is_the_measured_runs():
    report = Report.load(ROOT / "bench" / "results" / "reports" / "default.json")
    for role in ("teacher", "student", "baseline"):
        entry = report.models[role]
        row = next(line for line in README.splitlines() if line.startswith(f"| {role}"))
        assert f"| {entry.perplexity:.2f} |" in row, role
        assert f"| {entry.tokens_per_second:.1f} |" in row, role
        if entry.agreement is not None:
            assert f"| {entry.agreement.top1:.1%} |" in row, role
    assert f"closed {report.summary.gap_closed:.0%} of" in README
