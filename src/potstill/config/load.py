"""Reading recipes: YAML files, ``key.sub=value`` overrides, one-line errors.

Mistakes are reported as one `PotstillError` line that names the key and the fix (with the
closest valid key for a typo).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from potstill.config.schema import Recipe
from potstill.util.errors import PotstillError

# The embedded default run (`potstill run` with no recipe) fits its steps to this many
# minutes on the machine it runs on (docs/index.md: the time range measured).
DEFAULT_BUDGET_MINUTES = 14.0
# What the embedded default adds to the schema's defaults: only its time budget. Its
# models (the bundled SmolLM2 and a student cut from it) and data (the shipped
# Shakespeare) are the schema's own defaults, and so are the tuned loss, optimiser and
# teacher-cache settings (`potstill.config.schema`), which every recipe gets.
DEFAULT_RECIPE: dict[str, Any] = {"budget_minutes": DEFAULT_BUDGET_MINUTES}


def load_recipe(
    path: str | Path | Mapping[str, Any] | Recipe | None = None,
    overrides: list[str] | None = None,
) -> Recipe:
    """Read a recipe and apply ``key.sub=value`` overrides.

    ``path`` is a YAML file, a mapping of keys (as a YAML recipe would hold), a `Recipe`,
    or None for the embedded default.

    >>> load_recipe(None, ["train.steps=5", "student.adapter=lora"]).train.steps
    5
    >>> load_recipe({"train": {"steps": 7}}).train.steps
    7
    """
    raw: dict[str, Any] = {}
    if isinstance(path, Recipe):
        raw, path = path.model_dump(mode="json", exclude_unset=True), None
    elif isinstance(path, Mapping):
        raw, path = copy.deepcopy(dict(path)), None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise PotstillError(f"recipe {path} not found: give the path of a YAML recipe file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise PotstillError(
                f"recipe {path} is not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8"
            ) from None
        except OSError as e:
            raise PotstillError(
                f"recipe {path} cannot be read ({e.strerror or e}); check its permissions"
            ) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise PotstillError(f"recipe {path}{where} is not valid YAML: fix the syntax") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise PotstillError(f"recipe {path} must be a YAML mapping of keys to values")
        raw = loaded or {}
    if path is None and not raw:  # the embedded default: it must fit a slow machine too
        raw = copy.deepcopy(DEFAULT_RECIPE)
    apply_overrides(raw, overrides or [])
    return validate_recipe(raw, source=str(path) if path else "recipe")


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise PotstillError(_explain(e, raw, source)) from None


def apply_overrides(raw: dict[str, Any], items: list[str]) -> None:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw recipe, in place."""
    for item in items:
        _apply_override(raw, item)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise PotstillError(f"override {item!r} is not key=value: write e.g. train.steps=100")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        raise PotstillError(
            f"override {item!r}: the value is not valid YAML; quote it or fix the brackets"
        ) from None


def _explain(error: ValidationError, raw: dict[str, Any], source: str) -> str:
    """One line: which key, what is wrong, how to fix it."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = sorted(parent.model_fields) if parent is not None else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else ""
        return (
            f"{source}: unknown key {key}; {hint or 'valid keys here: ' + ', '.join(known)}"
        ).rstrip()
    if first["type"] == "literal_error":
        return f"{source}: {key} = {first.get('input')!r} is not allowed; {first['msg'].lower()}"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        where = f"{key}: " if loc and loc[-1] not in ("name", "device") else ""
        return f"{source}: {where}{msg.removeprefix('Value error, ')}"
    return f"{source}: {key} = {first.get('input')!r}: {msg.lower()}"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Recipe
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _first_model(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found is not None:
            return found
    return None
