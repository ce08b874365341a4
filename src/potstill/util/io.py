"""Files: atomic writes (a reader sees the old file or the new one, never half of either)
and sha256 checksums."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from potstill.util.errors import PotstillError

# Write failures a user fixes (a full disk, a folder they cannot write): one-line errors.
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def unwritable(path: str | Path, error: OSError) -> PotstillError:
    """A one-line `PotstillError` for ``error``, raised writing ``path``: what and the fix.

    >>> str(unwritable("runs/a/x.json", OSError(errno.ENOSPC, "No space left on device")))
    'cannot write runs/a/x.json (No space left on device): free some disk space and rerun'
    """
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space and rerun"
    else:
        fix = f"make {Path(path).parent} writable, or write somewhere else"
    return PotstillError(f"cannot write {path} ({error.strerror or error}): {fix}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; a full disk or a folder the user cannot write
    is a one-line `PotstillError`, and no temporary file is left behind. The file is
    `readable` (not mkstemp's 0600)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        error = _user_error(e, path)
        if error is None:
            raise
        raise error from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        readable(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        error = _user_error(e, path)  # before the temporary goes (a full disk: no room left)
        Path(tmp).unlink(missing_ok=True)
        if error is not None:
            raise error from e
        raise


def readable(path: str | Path) -> None:
    """Give a file written through a temporary (``mkstemp`` makes it 0600) the mode a
    shared output wants: read by anyone, written by its owner (0644), less the umask."""
    mask = os.umask(0)  # the only way to read it
    os.umask(mask)
    os.chmod(path, 0o644 & ~mask)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """One JSON object per line (UTF-8, not ASCII-escaped), written atomically."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def settle_dir(path: str | Path) -> None:
    """Finish what a killed `atomic_dir` left at ``path``: a process killed between its
    two renames leaves ``path`` missing and the previous folder at ``.NAME.old``, which is
    put back; unfinished temporary folders (``.NAME.*.tmp``) are removed."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.is_dir():
        os.replace(old, path)
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` whole.

    Killed at any moment, it leaves ``path`` whole (the old or the new folder), or missing
    with the old one at ``.NAME.old``; `settle_dir` (run here first, and by readers) puts
    that back."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        settle_dir(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as e:
        error = _user_error(e, path)
        if error is None:
            raise
        raise error from e
    tmp.chmod(0o755)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        error = _user_error(e, path)  # before the temporary goes (a full disk: no room left)
        shutil.rmtree(tmp, ignore_errors=True)
        if error is not None:
            raise error from e
        raise


# How the writers potstill saves folders with report a full disk (seen on a full tmpfs):
# Python by errno; safetensors in its message ("os error 28"); torch.save not at all, only
# as a failed write of its stream writer ("inline_container"), told apart by the filesystem
# having no room left.
_FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


def _user_error(error: BaseException, path: Path) -> PotstillError | None:
    """The one-line error for a failed write of ``path`` that the user fixes (a full disk,
    a folder they cannot write), or None for any other failure."""
    if isinstance(error, OSError) and error.errno in _USER_ERRNOS:
        return unwritable(path, error)
    if isinstance(error, Exception) and _out_of_space(error, path.parent):
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return unwritable(path, error if isinstance(error, OSError) else full)
    return None


def _out_of_space(error: Exception, folder: Path) -> bool:
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    if any(marker in text for marker in _FULL_DISK_TEXTS):
        return True
    if isinstance(error, RuntimeError) and "inline_container" in text:
        try:
            return shutil.disk_usage(folder).free < 1 << 20
        except OSError:
            return False
    return False


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def locked_folder(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` itself (created if missing) while the block runs,
    leaving no lock file behind: processes that build one thing in it take turns. No lock
    where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
