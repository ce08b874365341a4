"""Fingerprints: a sha256 naming what something was made from, so a resumed run can tell
an artefact made from the same inputs from one made from others."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint(*parts: Any) -> str:
    """sha256 of the parts as canonical JSON (keys sorted; anything else by ``str``).

    >>> fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    True
    >>> fingerprint([1, 2]) == fingerprint([2, 1])
    False
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
