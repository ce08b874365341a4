"""The report package imports one way: no module imports one that imports it back."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import potstill.evaluation.report as report_package

PACKAGE = "potstill.evaluation.report"


def internal_imports(path: Path, module: str) -> set[str]:
    """Modules of the package that `module` imports, anywhere in the file (lazy imports in
    a function count too). The package itself is the node "__init__": importing a name
    from it runs the whole package, so that importer depends on every module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = PACKAGE.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == PACKAGE:
                found.add("__init__")
            elif name.startswith(PACKAGE + "."):
                found.add(name[len(PACKAGE) + 1 :].split(".")[0])
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    folder = Path(report_package.__file__).parent
    return {path.stem: internal_imports(path, path.stem) for path in folder.glob("*.py")}


def test_import_graph_is_acyclic():
    graph = import_graph()
    assert set(graph) >= {"__init__", "schema", "build", "format", "plots", "html", "write"}
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises on a cycle
    assert max(order.index("schema"), order.index("units")) < order.index("plots")
    assert order.index("kinds") < order.index("format") < order.index("html")
    assert order.index("caveats") < order.index("terminal") < order.index("__init__")
    assert order.index("plots") < order.index("html") < order.index("write")
    assert order[-1] == "__init__"


def test_import_graph_has_the_expected_edges():
    graph = import_graph()
    assert graph["schema"] == set()
    assert graph["write"] >= {"html", "markdown", "plots", "schema"}
    assert "plots" in graph["html"] and "units" in graph["plots"]
    assert graph["health"] == {"schema"}  # a pure function of the curve
    assert all("__init__" not in imports for name, imports in graph.items() if name != "__init__")


def test_a_cycle_would_be_caught(tmp_path):
    source = tmp_path / "plots.py"
    source.write_text(f"def f():\n    from {PACKAGE}.html import render_html\n")
    graph = import_graph()
    graph["plots"] = internal_imports(source, "plots")
    assert graph["plots"] == {"html"}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())
