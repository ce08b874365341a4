"""Every code block in the docs (and the README) is exercised.

- ```yaml: a recipe (or a fragment: every key has a default); it loads with
  `potstill.load_recipe`.
- ```bash: each ``potstill VERB …`` line (also under ``torchrun``/``accelerate launch
  … -m potstill``) parses with the real command line: the verb, its options and arguments;
  recipe overrides load onto the named recipe (a file in the repo) or the default. A
  ``python bench/X.py`` or ``scripts/X.py`` line needs the script and each flag it passes;
  ``bash scripts/X.sh`` needs the script.
- ```python: a page's blocks run in order in one namespace, in a fresh folder holding
  ``my-recipe.yaml``, a recipe on a tiny in-process teacher (the user's own recipe in the
  text): the code as written, on a tiny model.
- ```text and ```json are shown output, not run. Any other language fails, so nothing
  slips past unchecked.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
import yaml

# typer bundles its own click: its exceptions are the ones the parser raises.
from typer._click.exceptions import ClickException

import potstill
from potstill.cli import app
from potstill.config.load import load_recipe
from tests.conftest import tiny_recipe

ROOT = Path(__file__).resolve().parents[2]
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
CHECKED = {"yaml", "bash", "python"}
SHOWN = {"text", "json"}
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, indented ones (in list items) included."""
    found, lines, i = [], page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, body = opening["indent"], []
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            body.append(lines[end][len(indent) :] if lines[end].startswith(indent) else lines[end])
            end += 1
        assert end < len(lines), f"{page}:{i + 1}: a code fence is never closed"
        found.append(Block(page, i + 1, opening["lang"], "\n".join(body) + "\n"))
        i = end + 1
    return found


ALL = [block for page in PAGES for block in blocks(page)]


def of(lang: str) -> list[Block]:
    return [b for b in ALL if b.lang == lang]


def test_every_block_has_a_language_this_file_checks_or_shows():
    assert len(ALL) > 20 and len(PAGES) > 10  # the pages are really read
    odd = [f"{b.where} ```{b.lang}" for b in ALL if b.lang not in CHECKED | SHOWN]
    assert not odd, f"give these blocks yaml, bash, python, text or json: {odd}"


@pytest.mark.parametrize("block", of("yaml"), ids=lambda b: b.where)
def test_a_recipe_snippet_loads(block, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(block.code)
    assert isinstance(yaml.safe_load(block.code), dict), "a recipe is a mapping of keys"
    load_recipe(path)


@pytest.mark.parametrize("block", of("json"), ids=lambda b: b.where)
def test_a_json_block_is_json(block):
    json.loads(block.code)


# --- shell commands -------------------------------------------------------------------


def commands(code: str) -> list[list[str]]:
    """The block's commands as argument lists: continuations joined, comments dropped, and
    ``&&`` / ``;`` / ``|`` chains split."""
    joined = re.sub(r"\\\n\s*", " ", code)
    found = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "|", "||"):
                if current:
                    found.append(current)
                current = []
            else:
                current.append(word)
    return found


def potstill_args(words: list[str]) -> list[str] | None:
    """The arguments a command passes to potstill, or None when it runs something else."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value prefix
        words = words[1:]
    if words and Path(words[0]).name == "potstill":
        return words[1:]
    if "-m" in words:
        at = words.index("-m")
        if at + 1 < len(words) and words[at + 1] == "potstill":
            return words[at + 2 :]
    return None


RECIPE_VERBS = {"run", "teach", "distill", "label", "generate"}


def check_potstill(args: list[str]) -> None:
    group = typer.main.get_command(app)
    ctx = group.make_context("potstill", list(args))
    name, command, rest = group.resolve_command(ctx, [*ctx._protected_args, *ctx.args])  # type: ignore[attr-defined]
    assert command is not None, f"no verb {name!r}"
    sub = command.make_context(name, list(rest), parent=ctx)
    if name in RECIPE_VERBS:  # run takes [RECIPE] OVERRIDES…; the others RECIPE OVERRIDES…
        values = list(sub.params.get("args") or [])
        recipe = sub.params.get("recipe") or (
            values.pop(0) if values and "=" not in values[0] else None
        )
        overrides = list(sub.params.get("overrides") or values)
        on = recipe if recipe and (ROOT / recipe).is_file() else None
        load_recipe(ROOT / on if on else None, overrides)


def check_script(words: list[str]) -> None:
    """``python bench/X.py --flag …``: the script exists and takes each flag."""
    script = next(w for w in words if w.endswith(".py"))
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    source = path.read_text(encoding="utf-8")
    for flag in (w.split("=")[0] for w in words if w.startswith("--")):
        assert f'"{flag}"' in source, f"{script} takes no {flag}"


@pytest.mark.parametrize("block", of("bash"), ids=lambda b: b.where)
def test_a_shell_command_parses(block):
    for words in commands(block.code):
        args = potstill_args(words)
        if args is not None:
            try:
                check_potstill(args)
            except typer.Exit:  # --help
                pass
            except ClickException as e:
                pytest.fail(f"{' '.join(words)}: {e.format_message()}")
        elif any(re.fullmatch(r"(bench|scripts)/[\w/]+\.py", w) for w in words):
            check_script(words)
        elif words[0] == "bash" and len(words) > 1:
            assert (ROOT / words[1]).is_file(), f"{words[1]} does not exist"


def test_the_shell_check_refuses_what_is_wrong():
    with pytest.raises(ClickException):
        check_potstill(["distill", "recipe.yaml", "--no-such-flag"])
    with pytest.raises(ClickException):
        check_potstill(["distil", "recipe.yaml"])
    with pytest.raises(potstill.PotstillError, match="traen"):
        check_potstill(["run", "recipes/hinton-classic.yaml", "traen.steps=3"])
    with pytest.raises(AssertionError, match="takes no --nope"):
        check_script(["python", "bench/heldout.py", "--nope"])
    with pytest.raises(potstill.PotstillError, match="stpes"):
        check_potstill(["distill", "recipes/hinton-classic.yaml", "train.stpes=3"])
    check_potstill(["run", "recipes/hinton-classic.yaml", "train.steps=40"])
    check_potstill(["eval", "--model", "runs/x/student", "--data", "notes.txt"])


# --- Python -------------------------------------------------------------------------


PYTHON_PAGES = sorted({b.page for b in of("python")})


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_pages_python_runs_on_a_tiny_model(page, tmp_path, monkeypatch, tiny_teacher_dir):
    corpus = tmp_path / "notes.txt"
    corpus.write_text(
        "\n\n".join(f"Note {i}: the cat sat on the mat {i} times." for i in range(60))
    )
    recipe = tiny_recipe("runs", tiny_teacher_dir, corpus)
    recipe["name"] = "my-run"
    (tmp_path / "my-recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in (b for b in ALL if b.page == page and b.lang == "python"):
        try:
            exec(compile(block.code, block.where, "exec"), namespace)
        except Exception as e:
            pytest.fail(f"{block.where}: {type(e).__name__}: {e}")


def shipped_recipes() -> dict[str, Path]:
    """The shipped recipe files by the run name they give (the embedded default: None)."""
    named: dict[str, Path | None] = {load_recipe(None).name: None}
    named.update({load_recipe(p).name: p for p in sorted((ROOT / "recipes").glob("*.yaml"))})
    return named


def named_recipe(block: Block) -> str | None:
    raw = yaml.safe_load(block.code)
    return raw.get("name") if isinstance(raw, dict) else None


SHIPPED = shipped_recipes()


@pytest.mark.parametrize(
    "block", [b for b in of("yaml") if named_recipe(b) in SHIPPED], ids=lambda b: b.where
)
def test_a_snippet_named_as_a_shipped_recipe_is_that_recipe(block, tmp_path):
    """A page that shows a shipped recipe (or the embedded default, spelt out) shows what
    the file holds, comments aside, so the command beside it runs what the page says."""
    path = tmp_path / "recipe.yaml"
    path.write_text(block.code)
    shipped = SHIPPED[named_recipe(block)]
    where = shipped.relative_to(ROOT) if shipped else "the embedded default"
    assert load_recipe(path) == load_recipe(shipped), f"differs from {where}"
