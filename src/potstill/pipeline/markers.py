"""Stage markers: what each finished stage was made from.

A finished stage writes ``stages/NAME.json`` holding the fingerprint of its inputs
(`potstill.util.fingerprint`: a sha256 over the recipe keys it reads and the fingerprints
of the stages it consumes) and what it measured. ``--resume`` skips a stage whose marker
matches and redoes one whose inputs changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from potstill.util.io import atomic_write_json


def marker_path(run_dir: Path, stage: str) -> Path:
    return run_dir / "stages" / f"{stage}.json"


def finished(run_dir: Path, stage: str, print_: str) -> dict[str, Any] | None:
    """The marker of ``stage`` if it finished with fingerprint ``print_``, else None."""
    path = marker_path(run_dir, stage)
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except ValueError:
        return None
    return marker if marker.get("fingerprint") == print_ else None


def mark_finished(run_dir: Path, stage: str, print_: str, **info: Any) -> dict[str, Any]:
    marker = {"stage": stage, "fingerprint": print_, **info}
    atomic_write_json(marker_path(run_dir, stage), marker)
    return marker


def forget(run_dir: Path, stage: str) -> None:
    marker_path(run_dir, stage).unlink(missing_ok=True)
