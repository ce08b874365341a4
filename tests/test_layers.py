"""The package's layers import one way only: each layer imports from itself and the
layers before it, never after (read from the source with ast, imports inside functions
included)."""

from __future__ import annotations

import ast
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
