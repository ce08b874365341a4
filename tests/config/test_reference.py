"""The generated references: every key described, every key listed, the pages current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from potstill.config.reference import model_rows
from potstill.config.schema import Recipe
from potstill.evaluation.report.schema import Report
from potstill.losses import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PAGES = {Recipe: ROOT / "docs/reference/recipe.md", Report: ROOT / "docs/reference/report.md"}


def schema_keys(model: type[BaseModel]) -> set[str]:
    """Every key path, walked from pydantic's JSON schema (an independent route to the
    fields: refs, unions, list items as ``[]`` and map values as ``{}``)."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    keys: set[str] = set()

    def objects(node: dict[str, Any], suffix: str = "") -> list[tuple[dict[str, Any], str]]:
        if "$ref" in node:
            return objects(defs[node["$ref"].rsplit("/", 1)[-1]], suffix)
        found = [(node, suffix)] if "properties" in node else []
        for option in node.get("anyOf", []) + node.get("allOf", []):
            found += objects(option, suffix)
        if isinstance(node.get("items"), dict):
            found += objects(node["items"], suffix + "[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += objects(node["additionalProperties"], suffix + "{}")
        return found

    def walk(node: dict[str, Any], prefix: str, seen: frozenset[str]) -> None:
        for name, prop in node["properties"].items():
            keys.add(prefix + name)
            for sub, suffix in objects(prop):
                title = sub.get("title", "")
                if title not in seen:
                    walk(sub, f"{prefix}{name}{suffix}.", seen | {title})

    walk(schema, "", frozenset({schema.get("title", "")}))
    return keys


def page_keys(page: Path) -> set[str]:
    """The first cells of the page's key tables (those headed ``| key | type |``), and the
    sections that head them (``## `student` ``)."""
    text = page.read_text()
    keys, in_table = set(re.findall(r"^## `([^`]+)`$", text, re.M)), False
    for line in text.splitlines():
        in_table = line.startswith("| key | type |") or (in_table and line.startswith("|"))
        found = re.match(r"\| (?:\*\*)?`([^`]+)`(?:\*\*)? \|", line)
        if in_table and found:
            keys.add(found.group(1))
    return keys


@pytest.mark.parametrize("model", [Recipe, Report], ids=lambda m: m.__name__)
def test_every_key_has_a_description(model):
    missing = [row.key for row in model_rows(model) if not row.description.strip()]
    assert not missing, f"keys with no description (write one under the field): {missing}"


@pytest.mark.parametrize("model", [Recipe, Report], ids=lambda m: m.__name__)
def test_the_reference_lists_every_key_of_the_schema(model):
    expected = schema_keys(model)
    assert len(expected) > (150 if model is Recipe else 60)  # the walk really walked
    assert {row.key for row in model_rows(model)} == expected
    assert page_keys(PAGES[model]) == expected


def test_every_loss_name_and_parameter_is_listed():
    page = PAGES[Recipe].read_text()
    for name, spec in REGISTRY.items():
        assert f"| `{name}` |" in page
        for param in spec.params:
            assert f"`{param}` (default" in page


def test_a_row_says_type_default_and_range():
    row = next(r for r in model_rows(Recipe) if r.key == "train.lr")
    assert (row.type, row.default, row.range) == ("float", "`0.002`", "> 0")
    row = next(r for r in model_rows(Recipe) if r.key == "budget_minutes")
    assert (row.type, row.default) == ("float or null", "`null`")
    assert "`train.lr` | float | `0.002` | > 0 |" in PAGES[Recipe].read_text()


def test_the_committed_pages_are_current():
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts/docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
