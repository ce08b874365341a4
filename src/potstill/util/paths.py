"""Where potstill keeps what it downloads and converts."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$POTSTILL_HOME``, else ``~/.cache/potstill``."""
    env = os.environ.get("POTSTILL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "potstill"
