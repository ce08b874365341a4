"""The Benchmarks page is bench/tables.py's output, and it reads every result file."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "tables.py"


def load_tables():
    spec = importlib.util.spec_from_file_location("bench_tables", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_committed_page_is_what_the_generator_writes():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr.strip() or done.stdout.strip()


def test_every_json_result_is_read_by_a_section():
    tables = load_tables()
    read = {name for section in tables.SECTIONS for name in section.files}
    results = {path.name for path in (ROOT / "bench" / "results").glob("*.json")}
    assert results - read == set(), "bench/tables.py: add a section for each of these"


def test_every_text_result_is_shown_or_placed():
    tables = load_tables()
    assert tables.unplaced() == []
    twins = {twin for twin in tables.TWINS.values()}
    read = {name for section in tables.SECTIONS for name in section.files}
    assert twins <= read, "a text result's JSON twin must be on the page"


def test_a_result_file_on_no_section_stops_the_generator(tmp_path, monkeypatch):
    tables = load_tables()
    for path in (ROOT / "bench" / "results").glob("*.*"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "new_bench.json").write_text("[]\n")
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    assert tables.unplaced() == ["new_bench.json"]
    try:
        tables.render()
    except SystemExit as stop:
        assert "new_bench.json" in str(stop.code)
    else:
        raise AssertionError("render() wrote a page that leaves new_bench.json out")


def test_check_says_stale_in_one_line(tmp_path, monkeypatch, capsys):
    tables = load_tables()
    stale = tmp_path / "benchmarks.md"
    stale.write_text("# Benchmarks\n\nold\n")
    monkeypatch.setattr(tables, "PAGE", stale)
    monkeypatch.setattr(sys, "argv", ["tables.py", "--check"])
    assert tables.main() == 1
    assert stale.read_text() == "# Benchmarks\n\nold\n"  # --check writes nothing
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "python bench/tables.py" in message
