"""The run folder: created once, never overwritten without --resume, never left."""

from __future__ import annotations

from pathlib import Path

from potstill.config import Recipe
from potstill.synth.generations import OUTPUTS as GENERATE_OUTPUTS
from potstill.util.errors import PotstillError
from potstill.util.io import atomic_write_text

# What `potstill teach`, `label` and `generate` leave in a run folder: a later `distill`
# or `run` of the same recipe starts from it without --resume.
TEACH_OUTPUTS = {
    "config.yaml",
    "data",
    "cache",
    "stages",
    "labels.parquet",
    *GENERATE_OUTPUTS,
}


def run_dir_of(recipe: Recipe) -> Path:
    """``runs_dir/name``, refused if it would resolve outside ``runs_dir``.

    The recipe schema already refuses names with a path separator; this also catches a
    symlink inside ``runs_dir`` that points elsewhere.
    """
    root = Path(recipe.runs_dir).expanduser().resolve()
    run_dir = (root / recipe.name).resolve()
    if run_dir.parent != root:
        raise PotstillError(
            f"run name {recipe.name!r} leads outside {recipe.runs_dir}/ (to {run_dir}): "
            "give a plain name, or set runs_dir to where runs should go"
        )
    return Path(recipe.runs_dir) / recipe.name


def prepare_run_dir(recipe: Recipe, *, resume: bool) -> Path:
    """Create the run folder, or check that continuing it is safe. Never overwrites outputs.

    Without ``resume`` an existing run (beyond what `teach` leaves) is refused. With it, a
    recipe that changed is allowed: each stage compares its inputs' fingerprint with the
    one it finished with and redoes itself when they differ.
    """
    run_dir = run_dir_of(recipe)
    saved = run_dir / "config.yaml"
    if run_dir.exists() and any(run_dir.iterdir()):
        taught_only = {p.name for p in run_dir.iterdir()} <= TEACH_OUTPUTS
        if not resume and not taught_only:
            raise PotstillError(
                f"{run_dir} already exists; pass --resume to continue or finish it, "
                "or set name=NEW for a new run"
            )
        if not resume and saved.is_file() and saved.read_text() != recipe.to_yaml():
            raise PotstillError(
                f"{run_dir} was made by a different recipe (see its config.yaml); "
                "set name=NEW to start another run, or pass --resume to redo what changed"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PotstillError(
            f"cannot create the run folder {run_dir} ({e.strerror or e}): make "
            f"{recipe.runs_dir} writable, or set runs_dir to a folder you can write"
        ) from e
    text = recipe.to_yaml()
    if not saved.is_file() or saved.read_text(encoding="utf-8") != text:  # same: untouched
        atomic_write_text(saved, text)
    return run_dir
