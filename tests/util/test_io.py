"""Atomic folder writes survive a kill at any moment (`settle_dir` finishes the swap)."""

from __future__ import annotations

import os

from potstill.util.io import atomic_dir, settle_dir


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
