"""The run folder: created once, never overwritten without resume, never outside runs_dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from potstill.config import Recipe, load_recipe
from potstill.pipeline import prepare_run_dir, run_dir_of
from potstill.util.errors import PotstillError
from tests.conftest import run_cli

PATH_NAMES = ["../x", "../../x", "a/b", "/abs", ".", "..", ".hidden"]


def recipe_in(runs_dir: Path, **changes) -> Recipe:
    return Recipe(name="r", runs_dir=str(runs_dir), **changes)


def listing(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def test_a_new_run_folder_holds_the_resolved_recipe(tmp_path):
    recipe = recipe_in(tmp_path / "runs", train={"steps": 7})

    run_dir = prepare_run_dir(recipe, resume=False)

    assert run_dir == tmp_path / "runs" / "r"
    assert listing(run_dir) == {"config.yaml": recipe.to_yaml().encode()}
    assert load_recipe(run_dir / "config.yaml") == recipe


def test_an_empty_folder_is_used_as_a_new_one(tmp_path):
    (tmp_path / "runs" / "r").mkdir(parents=True)
    run_dir = prepare_run_dir(recipe_in(tmp_path / "runs"), resume=False)
    assert (run_dir / "config.yaml").is_file()


def test_an_existing_run_is_refused_without_resume_and_left_alone(tmp_path):
    old = recipe_in(tmp_path / "runs")
    run_dir = prepare_run_dir(old, resume=False)
    (run_dir / "report.json").write_text('{"old": true}')
    before = listing(run_dir)

    for recipe in (old, recipe_in(tmp_path / "runs", train={"steps": 9})):
        with pytest.raises(PotstillError, match="already exists; pass --resume") as e:
            prepare_run_dir(recipe, resume=False)
        assert "name=NEW" in str(e.value) and "\n" not in str(e.value)
        assert listing(run_dir) == before

    new = recipe_in(tmp_path / "runs", train={"steps": 9})
    assert prepare_run_dir(new, resume=True) == run_dir
    assert (run_dir / "config.yaml").read_text() == new.to_yaml()
    assert (run_dir / "report.json").read_text() == '{"old": true}'


def test_what_teach_leaves_is_continued_without_resume_by_the_same_recipe(tmp_path):
    recipe = recipe_in(tmp_path / "runs")
    run_dir = prepare_run_dir(recipe, resume=False)
    (run_dir / "cache").mkdir()
    (run_dir / "cache" / "manifest.json").write_text("{}")
    (run_dir / "stages").mkdir()

    assert prepare_run_dir(recipe, resume=False) == run_dir
    assert (run_dir / "cache" / "manifest.json").read_text() == "{}"

    other = recipe_in(tmp_path / "runs", train={"steps": 9})
    with pytest.raises(PotstillError, match="made by a different recipe"):
        prepare_run_dir(other, resume=False)
    assert (run_dir / "config.yaml").read_text() == recipe.to_yaml()
    prepare_run_dir(other, resume=True)
    assert (run_dir / "config.yaml").read_text() == other.to_yaml()


def test_the_run_folder_is_runs_dir_slash_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_dir_of(Recipe(name="a.b_c-1", runs_dir="runs")) == Path("runs/a.b_c-1")
    assert run_dir_of(recipe_in(tmp_path / "runs")) == tmp_path / "runs" / "r"


def test_a_symlink_leading_out_of_runs_dir_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r").symlink_to(elsewhere, target_is_directory=True)
    recipe = recipe_in(tmp_path / "runs")

    with pytest.raises(PotstillError, match=r"run name 'r' leads outside .*elsewhere"):
        run_dir_of(recipe)
    with pytest.raises(PotstillError, match="leads outside"):
        prepare_run_dir(recipe, resume=True)
    assert list(elsewhere.iterdir()) == []


def test_runs_dir_may_itself_be_a_symlink(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "runs").symlink_to(tmp_path / "store", target_is_directory=True)

    run_dir = prepare_run_dir(recipe_in(tmp_path / "runs"), resume=False)

    assert run_dir == tmp_path / "runs" / "r"
    assert (tmp_path / "store" / "r" / "config.yaml").is_file()


@pytest.mark.parametrize("name", PATH_NAMES)
def test_the_schema_refuses_a_name_that_is_a_path(name):
    with pytest.raises(ValidationError):
        Recipe(name=name)
    with pytest.raises(PotstillError, match="must be a plain folder name") as e:
        load_recipe({"name": name})
    assert repr(name) in str(e.value) and "set runs_dir" in str(e.value)


potstill = run_cli


@pytest.mark.parametrize(
    ("in_yaml", "override"),
    [("../x", None), ("tiny", "name=../x"), ("tiny", "name=../../x")],
)
def test_the_cli_refuses_a_path_name_in_one_line_and_writes_nothing(
    tmp_path, tiny_teacher_dir, corpus_file, capsys, in_yaml, override
):
    work = tmp_path / "work"
    work.mkdir()
    recipe = work / "tiny.yaml"
    recipe.write_text(
        f"name: {in_yaml}\nruns_dir: {work / 'runs'}\nteacher: {tiny_teacher_dir}\n"
        f"data: {{path: {corpus_file}, block_size: 16}}\ntrain: {{steps: 1}}\n"
    )
    before = listing(tmp_path)

    code, out, err = potstill("run", str(recipe), *([override] if override else []), capsys=capsys)

    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "must be a plain folder name" in line
    assert "Traceback" not in err
    assert listing(tmp_path) == before  # not runs/, nor work/x, nor tmp_path/x
