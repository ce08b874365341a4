"""``generations.jsonl``: what the teacher wrote, one row per (prompt, sample), kept
atomically and resumed.

A run folder holds, once generation has finished:

- ``generations.jsonl``: one JSON object per row, in prompt order then sample order:
  ``prompt_id``, ``sample``, ``prompt``, ``messages``, ``response``, ``finish_reason``,
  ``prompt_tokens``, ``completion_tokens``, ``teacher``, ``teacher_sha256`` (local
  teachers; None for an endpoint), ``prompt_sha256``, ``seed``;
- ``generations.manifest.json``: the settings and their fingerprint, counts, token usage
  and seconds.

While it runs, finished rows go to ``generations.parts/shard-NNNNN.jsonl``, each shard
written whole to a temporary file and renamed (a reader sees a whole shard or none; a
killed writer leaves at most a stray temporary file, which is ignored), next to
``generations.parts/settings.json``. A rerun reads the rows already in
``generations.jsonl`` and in the shards and generates only the others; at the end the
whole file is rewritten atomically and the shards removed. A store made with other
settings (teacher, system prompt, sampling, …) is refused with the keys that differ.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from potstill.util.errors import PotstillError
from potstill.util.io import atomic_write_json, atomic_write_jsonl

FORMAT_VERSION = 1
GENERATIONS_FILE = "generations.jsonl"
MANIFEST_FILE = "generations.manifest.json"
PARTS_DIR = "generations.parts"
OUTPUTS = (GENERATIONS_FILE, MANIFEST_FILE, PARTS_DIR)  # what `generate` leaves in a run

RowKey = tuple[str, int]  # (prompt sha256, sample index)


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of the settings as canonical JSON.

    >>> settings_fingerprint({"a": 1, "b": 2}) == settings_fingerprint({"b": 2, "a": 1})
    True
    """
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def row_key(row: dict[str, Any]) -> RowKey:
    return row["prompt_sha256"], int(row["sample"])


class GenerationsStore:
    """The generations of one run folder (``run_dir``), as files.

    >>> store = GenerationsStore(Path("runs/x"))
    >>> store.path.name, store.manifest_path.name
    ('generations.jsonl', 'generations.manifest.json')
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / GENERATIONS_FILE
        self.manifest_path = self.run_dir / MANIFEST_FILE
        self.parts = self.run_dir / PARTS_DIR

    def check(self, settings: dict[str, Any]) -> None:
        """Refuse (one line) to continue a store made with other ``settings``."""
        for where, old in self._saved_settings():
            changed = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
            if changed:
                diff = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
                raise PotstillError(
                    f"{where} was generated with other settings ({diff}); set name=NEW to "
                    f"generate into a new run, or delete {self.run_dir}/generations* to start over"
                )

    def done(self) -> dict[RowKey, dict[str, Any]]:
        """The rows already written: the finished file's, then the shards' (a shard's row
        wins over the file's: it is newer)."""
        rows: dict[RowKey, dict[str, Any]] = {}
        sources = [self.path] if self.path.is_file() else []
        sources += self._shards()
        for source in sources:
            for row in _read_rows(source):
                rows[row_key(row)] = row
        return rows

    def begin(self, settings: dict[str, Any]) -> None:
        """Record the settings beside the shards (before the first one is written)."""
        atomic_write_json(self.parts / "settings.json", settings)

    def write_shard(self, rows: list[dict[str, Any]]) -> Path:
        """Save ``rows`` as the next shard, atomically; returns its path."""
        shards = self._shards()
        number = int(shards[-1].stem.removeprefix("shard-")) + 1 if shards else 0
        path = self.parts / f"shard-{number:05d}.jsonl"
        atomic_write_jsonl(path, rows)
        return path

    def finish(self, rows: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
        """Write the whole file and the manifest (each atomically), then drop the shards."""
        atomic_write_jsonl(self.path, rows)
        atomic_write_json(self.manifest_path, manifest)
        shutil.rmtree(self.parts, ignore_errors=True)

    def _shards(self) -> list[Path]:
        return sorted(self.parts.glob("shard-*.jsonl")) if self.parts.is_dir() else []

    def _saved_settings(self) -> Iterable[tuple[Path, dict[str, Any]]]:
        if self.path.is_file():
            if not self.manifest_path.is_file() and not (self.parts / "settings.json").is_file():
                raise PotstillError(
                    f"{self.path} has no {MANIFEST_FILE} beside it, so its settings are "
                    f"unknown; delete it to generate again, or set name=NEW"
                )
            if self.manifest_path.is_file():
                yield self.path, _read_json(self.manifest_path).get("settings", {})
        if (self.parts / "settings.json").is_file():
            yield self.parts, _read_json(self.parts / "settings.json")


def read_generations(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``generations.jsonl``, in file order."""
    return _read_rows(Path(path))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            row_key(row)
        except (ValueError, KeyError, TypeError):
            raise PotstillError(
                f"{path} line {number} is not a generation row; delete {path} to generate "
                "its rows again"
            ) from None
        rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise PotstillError(f"{path} is not valid JSON; delete it to generate again")
    return value
