"""The package's layers import one way only: each layer imports from itself and the
layers before it, never after (read from the source with ast, imports inside functions
included)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "potstill"

# The order of the layers; a layer may import only from its own rank or lower ones.
LAYERS = {
    "util": 0,
    "signals": 1,
    "losses": 2,
    "models": 3,
    "data": 3,
    "teachers": 4,
    "generation": 4,
    "cache": 5,
    "synth": 6,
    "tasks": 7,
    "train": 8,
    "evaluation": 9,
    "config": 10,
    "pipeline": 11,
    "serve": 11,
    "api": 12,
    "cli": 13,
    "__main__": 14,
}


def layer_of(module: str) -> str:
    """``potstill.losses.terms`` -> ``losses``; the package itself is the top."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__version__":
        return "__init__"
    return parts[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "potstill" else []
            names += [f"potstill.{a.name}" for a in node.names if node.module == "potstill"]
            found += [(node.lineno, n) for n in names if n.startswith("potstill")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("potstill")]
    return found


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_folder_is_a_known_layer_with_a_docstring():
    for path in SRC.iterdir():
        if path.is_dir() and (path / "__init__.py").is_file():
            assert path.name in LAYERS, f"{path.name}/ is in no layer: add it to LAYERS"
            doc = ast.get_docstring(ast.parse((path / "__init__.py").read_text()))
            assert doc and len(doc) > 40, f"{path.name}/__init__.py must say the folder's job"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_one_way(path):
    here = path.relative_to(SRC).parts[0].removesuffix(".py")
    if here == "__init__":
        return  # the package root re-exports the API lazily
    rank = LAYERS[here]
    for line, module in imports_of(path):
        there = layer_of(module)
        if there in ("__init__",):
            continue  # `from potstill import __version__`
        assert there in LAYERS, f"{path}:{line} imports {module}, which is in no layer"
        assert LAYERS[there] <= rank, (
            f"{path.relative_to(SRC)}:{line} imports {module}: layer {here} may not import "
            f"from {there}, which comes after it"
        )


def test_losses_and_train_never_import_config():
    for folder in ("losses", "train", "data", "models", "signals", "teachers", "synth", "tasks"):
        for path in (SRC / folder).rglob("*.py"):
            for line, module in imports_of(path):
                assert layer_of(module) != "config", f"{path}:{line} imports {module}"


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from potstill.pipeline import run\n")
    assert imports_of(bad) == [(2, "potstill.pipeline")]
    assert LAYERS[layer_of("potstill.pipeline")] > LAYERS["losses"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the potstill modules it imports (``from a.b import c`` names ``a.b.c``
    when that is a module, else ``a.b``), imports inside functions included."""
    known = {_module_name(p) for p in modules()}
    graph: dict[str, set[str]] = {}
    for path in modules():
        tree = ast.parse(path.read_text())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in known else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        name = _module_name(path)
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle between two modules that are not a package and its own
    ``__init__`` re-exporting it (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    packages = {_module_name(p) for p in modules() if p.name == "__init__.py"}
    # A package's __init__ re-exports its modules, and they may read a name from it.
    return [c for c in found if not any(m in packages for m in c)]


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_circle_finder_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_architecture_page_lists_every_layer_at_its_rank():
    page = (SRC.parent.parent / "docs" / "reference" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (.+?) \|", page, re.M)
    documented = {name.strip("` "): int(rank) for rank, names in rows for name in names.split(",")}
    assert documented == {k: v for k, v in LAYERS.items() if k != "__main__"}
