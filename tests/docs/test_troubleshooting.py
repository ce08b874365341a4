"""docs/troubleshooting.md quotes only messages potstill really prints.

The page's convention: every ``### `` heading is one entry, and its first backticked span
is the message, with ``…`` where the printed line names a file, key or number. Each
message's fixed parts (the text between the ``…``) must appear, in order and close
together, in the string literals of one module of ``src/potstill`` (read with `ast`, so
implicit and ``+`` concatenation across lines count as one string, and docstrings do not
count). The two messages whose words come from pydantic are produced instead. The most
common ones are triggered through the real command line and must be the line it prints.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import yaml

from potstill.config import load_recipe
from potstill.util.errors import PotstillError
from tests.conftest import run_cli, tiny_recipe

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "troubleshooting.md"
SOURCE = ROOT / "src" / "potstill"
GAP = "…"  # on the page: the part of a message that varies
HOLE = "\x00"  # in a rendered literal: an interpolated value
SEPARATOR = "\x01"  # between two string expressions of a module
SPAN = 800  # characters of a module's literals one message may spread over
DISTINCT = 12  # the longest fixed part of a message is at least this long

# Messages whose words are pydantic's (`potstill.config.load._explain` adds the key and
# value): the overrides that produce each.
FROM_PYDANTIC = {
    "… = …: input should be …": ["train.steps=0"],
    "… = … is not allowed; input should be …": ["loss=[{loss: forward_kld}]"],
}


# --- the page -------------------------------------------------------------------------


def page_messages() -> list[str]:
    """The message of each ``### `` entry, fenced code blocks left out."""
    text = re.sub(r"^```.*?^```", "", PAGE.read_text(encoding="utf-8"), flags=re.M | re.S)
    messages = []
    for heading in re.findall(r"^### (.+)$", text, flags=re.M):
        quoted = re.search(r"`([^`]+)`", heading)
        assert quoted, f"### {heading}: an entry's heading quotes its message in backticks"
        messages.append(quoted.group(1))
    return messages


MESSAGES = page_messages()


def fixed_parts(message: str) -> list[str]:
    """The parts of ``message`` between its gaps, whitespace runs made one space."""
    return [part for part in (_squeeze(p) for p in message.split(GAP)) if part]


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def in_order(text: str, parts: list[str], span: int | None = None) -> bool:
    """Whether ``parts`` occur in ``text`` in this order, not overlapping, the first
    to the end of the last within ``span`` characters (None: anywhere)."""
    start = text.find(parts[0])
    while start != -1:
        end = start + len(parts[0])
        for part in parts[1:]:
            at = text.find(part, end)
            if at == -1:
                return False  # a later start cannot find it either
            end = at + len(part)
        if span is None or end - start <= span:
            return True
        start = text.find(parts[0], start + 1)
    return False


# --- the source -------------------------------------------------------------------------


class _Literals(ast.NodeVisitor):
    """A module's string expressions in source order, rendered: interpolated values and
    non-literal operands of ``+`` become `HOLE`. Docstrings (string statements) are left
    out: a message quoted in prose is not one the code prints."""

    def __init__(self) -> None:
        self.found: list[tuple[int, int, str]] = []

    def visit_Expr(self, node: ast.Expr) -> None:
        if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self._add(node, node.value)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._add(node, self._render(node))

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Add) and self._stringy(node):
            self._add(node, self._render(node))
        else:
            self.generic_visit(node)

    def _stringy(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.JoinedStr):
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self._stringy(node.left) or self._stringy(node.right)
        return False

    def _render(self, node: ast.expr) -> str:
        """The literal text of ``node``; what it computes is a `HOLE`, whose own string
        expressions are collected on their own."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(self._render(value) for value in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and self._stringy(node):
            return self._render(node.left) + self._render(node.right)
        inner = node.value if isinstance(node, ast.FormattedValue) else node
        self.visit(inner)
        return HOLE

    def _add(self, node: ast.expr, text: str) -> None:
        self.found.append((node.lineno, node.col_offset, _squeeze(text)))


@cache
def module_texts() -> dict[str, str]:
    """Each module of ``src/potstill``: its rendered string expressions, joined."""
    texts = {}
    for path in sorted(SOURCE.rglob("*.py")):
        literals = _Literals()
        literals.visit(ast.parse(path.read_text(encoding="utf-8")))
        texts[str(path.relative_to(ROOT))] = SEPARATOR.join(t for *_, t in sorted(literals.found))
    return texts


def where_printed(message: str) -> list[str]:
    """The modules whose string literals hold ``message``'s fixed parts in order."""
    parts = fixed_parts(message)
    return [name for name, text in module_texts().items() if in_order(text, parts, SPAN)]


# --- the tests --------------------------------------------------------------------------


def test_the_page_has_its_entries():
    assert 30 <= len(MESSAGES) <= 55
    assert len(set(MESSAGES)) == len(MESSAGES), "an entry is repeated"
    assert set(FROM_PYDANTIC) <= set(MESSAGES)


@pytest.mark.parametrize("message", MESSAGES)
def test_a_quoted_message_is_distinctive(message):
    parts = fixed_parts(message)
    assert parts and max(map(len, parts)) >= DISTINCT, "quote more of the message"
    assert "`" not in message and HOLE not in message


@pytest.mark.parametrize("message", [m for m in MESSAGES if m not in FROM_PYDANTIC])
def test_a_quoted_message_is_in_the_source(message):
    assert where_printed(message), f"no module of src/potstill prints {message!r}"


@pytest.mark.parametrize("message", FROM_PYDANTIC)
def test_a_pydantic_message_is_what_loading_says(message):
    with pytest.raises(PotstillError) as raised:
        load_recipe(None, FROM_PYDANTIC[message])
    assert in_order(str(raised.value), fixed_parts(message)), str(raised.value)


def test_the_check_refuses_what_is_not_printed():
    assert where_printed("recipe … not found: give the path of a YAML recipe file")
    assert not where_printed("recipe … not found: give the path of a JSON recipe file")
    # config/load.py says both, in the other order
    assert not where_printed("check its permissions … not found: give the path")
    # A docstring is not a message (this one is util/secrets.py's).
    assert not where_printed("An unset or empty variable is a one-line")
    # `+` across lines is one string (serve/server.py's warning).
    assert where_printed("warning: serving on …, which other machines can reach")


# --- the common ones, through the command line -----------------------------------------


Args = Callable[[Path, Path], list[str]]  # (a recipe file on a tiny teacher, the folder)


def _file(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


BODY_ROW = '{"body": "To be, or not to be"}\n'


def _finished_run(recipe: Path, folder: Path) -> list[str]:
    (folder / "runs" / "tiny").mkdir(parents=True)
    (folder / "runs" / "tiny" / "metrics.jsonl").write_text("")
    return ["run", str(recipe)]


COMMON: list[tuple[str, Args]] = [
    (
        "recipe … not found: give the path of a YAML recipe file",
        lambda r, f: ["run", "nope.yaml"],
    ),
    ("unknown key …", lambda r, f: ["run", str(r), "train.setps=3"]),
    ("… = …: input should be …", lambda r, f: ["run", str(r), "train.steps=ten"]),
    (
        "… = … is not allowed; input should be …",
        lambda r, f: ["run", str(r), "train.precision=fp8"],
    ),
    (
        "override … is not key=value: write e.g. train.steps=100",
        lambda r, f: ["run", str(r), "train.steps"],
    ),
    (
        "potstill … is for task.kind lm; this recipe is task.kind …",
        lambda r, f: ["teach", str(r), "task.kind=classify", "task.labels=[a, b]"],
    ),
    ("data.path … does not exist", lambda r, f: ["teach", str(r), "data.path=nope.jsonl"]),
    (
        "…: not valid JSON (…, column …); fix or remove that line",
        lambda r, f: ["teach", str(r), f"data.path={_file(f, 'rows.jsonl', '{oops}')}"],
    ),
    (
        "…: no '…' field (the row has: …); set data.text_field=…",
        lambda r, f: ["teach", str(r), f"data.path={_file(f, 'body.jsonl', BODY_ROW)}"],
    ),
    (
        "data …: found … tokens in …, which make … train and … held-out blocks",
        lambda r, f: ["teach", str(r), f"data.path={_file(f, 'empty.txt', '')}"],
    ),
    (
        "model … not found: no such folder",
        lambda r, f: ["quantize", "/no/such/model", "--out", "quantized"],
    ),
    ("no bundled model named …", lambda r, f: ["pull", "smollm2-135m"]),
    (
        "… already exists; pass --resume to continue or finish it, or set name=NEW for a new run",
        _finished_run,
    ),
    (
        "task.labels has … label(s) but kind is classify; give at least two",
        lambda r, f: ["run", str(r), "task.kind=classify"],
    ),
    (
        "must be the NAME of an environment variable (letters, digits, _), not the key itself",
        lambda r, f: ["run", str(r), "teach.endpoint.api_key_env=sk-abc123"],
    ),
    (
        "…: the environment variable … is not set or empty; export …=<your key>",
        lambda r, f: ["serve", str(f), "--api-key-env", "POTSTILL_DOCS_UNSET_KEY"],
    ),
]


@pytest.mark.parametrize("message, args", COMMON, ids=[m[:40] for m, _ in COMMON])
def test_a_common_error_prints_the_pages_line(
    message, args, tmp_path, monkeypatch, capsys, tiny_teacher_dir, corpus_file
):
    assert message in MESSAGES, "the page has no entry for it"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POTSTILL_DOCS_UNSET_KEY", raising=False)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe("runs", tiny_teacher_dir, corpus_file)))
    code, out, err = run_cli(*args(recipe, tmp_path), capsys=capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and out == "", err
    assert in_order(lines[0], fixed_parts(message)), lines[0]
