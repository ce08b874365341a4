"""Atomic folder writes survive a kill at any moment (`settle_dir` finishes the swap)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
import torch

from potstill.util.errors import PotstillError
from potstill.util.io import atomic_dir, atomic_write_text, settle_dir


def _write(folder, text):
    with atomic_dir(folder) as tmp:
        (tmp / "state.json").write_text(text)


def test_a_swap_killed_between_its_renames_is_put_back(tmp_path):
    folder = tmp_path / "ckpt"
    _write(folder, "step 3")
    # What a SIGKILL between atomic_dir's two renames leaves: the new folder still a
    # temporary, the previous one moved aside, nothing at the path.
    new = tmp_path / ".ckpt.x1y2.tmp"
    new.mkdir()
    (new / "state.json").write_text("step 6")
    os.replace(folder, tmp_path / ".ckpt.old")
    settle_dir(folder)
    assert (folder / "state.json").read_text() == "step 3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_the_next_save_settles_first_and_replaces_whole(tmp_path):
    folder = tmp_path / "ckpt"
    _write(folder, "one")
    os.replace(folder, tmp_path / ".ckpt.old")
    (tmp_path / ".ckpt.abc.tmp").mkdir()
    _write(folder, "two")
    assert (folder / "state.json").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_settle_leaves_a_whole_folder_alone(tmp_path):
    folder = tmp_path / "ckpt"
    _write(folder, "one")
    settle_dir(folder)
    settle_dir(tmp_path / "never-written")
    assert (folder / "state.json").read_text() == "one"


# --- a full disk while a folder is saved -----------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs), where this machine lets us mount one (root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip("cannot mount a small tmpfs here (not root); the simulated twins run")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def _writers():
    """What potstill writes folders with; none of them names a full disk plainly."""
    from safetensors.torch import save_file

    big = {"w": torch.zeros(200_000)}  # 800 KB: more than the disk holds
    return {
        "safetensors": lambda tmp: save_file(big, str(tmp / "model.safetensors")),
        "torch.save": lambda tmp: torch.save(big, tmp / "optim.pt"),
        "python": lambda tmp: (tmp / "state.json").write_bytes(b"x" * 800_000),
    }


@pytest.mark.parametrize("writer", ["safetensors", "torch.save", "python"])
def test_a_full_disk_is_one_line_and_keeps_the_old_folder(small_disk, writer):
    folder = small_disk / "student"
    with atomic_dir(folder) as tmp:
        (tmp / "old.txt").write_text("previous")
    full = r"No space left on device.*free some disk space"
    with pytest.raises(PotstillError, match=full), atomic_dir(folder) as tmp:
        _writers()[writer](tmp)
    assert (folder / "old.txt").read_text() == "previous"
    assert sorted(p.name for p in small_disk.iterdir()) == ["student"]  # no temporary left


@pytest.mark.parametrize(
    ("error", "free"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 10**9),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), 10**9),
        # what safetensors and torch.save raised on a real full tmpfs (the test above)
        (
            Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
            10**9,
        ),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), 0),
    ],
)
def test_full_disk_errors_are_recognised(tmp_path, monkeypatch, error, free):
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 0, free))
    with (
        pytest.raises(PotstillError, match="free some disk space"),
        atomic_dir(tmp_path / "out") as tmp,
    ):
        (tmp / "a").write_text("x")
        raise error
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    # torch's writer failing with space left is a real error: its traceback is kept
    with pytest.raises(RuntimeError, match="inline_container"), atomic_dir(tmp_path / "out"):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")
    with pytest.raises(ValueError), atomic_dir(tmp_path / "out"):
        raise ValueError("not a disk")


def test_atomically_written_files_are_readable_by_others(tmp_path):
    """Reports and manifests go through mkstemp (0600); they are left 0644 less the umask,
    as an output shared with other users and tools should be."""
    mask = os.umask(0)
    os.umask(mask)
    atomic_write_text(tmp_path / "report.md", "# report\n")
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644 & ~mask
