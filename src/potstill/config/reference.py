"""The recipe and report references, generated from the pydantic types themselves.

Every key of a section model becomes one row (dotted key, type, default, range,
description), so the documentation cannot drift from the code: `scripts/docs.py` writes
``docs/reference/recipe.md`` and ``docs/reference/report.md`` from here, and a test fails
when a key has no description or a committed page is stale.

>>> rows = model_rows(Recipe)
>>> next(r for r in rows if r.key == "train.lr").range
'> 0'
>>> next(r for r in rows if r.key == "task.kind").type
'one of `lm`, `classify`, `reason`, `context`'
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from potstill.config.schema import DEFAULT_LOSS, DEFAULT_TRAIN, Recipe
from potstill.evaluation.report.schema import Report, json_ready
from potstill.losses import REGISTRY

_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.MinLen, "min_length", "length ≥"),
    (annotated_types.MaxLen, "max_length", "length ≤"),
)


@dataclass(frozen=True)
class KeyRow:
    """One key of a section model: where it sits and what it takes."""

    key: str  # dotted path; a list's items are ``key[].sub``, a map's values ``key{}.sub``
    type: str
    default: str
    range: str
    description: str
    section: bool  # a nested model, whose own keys follow as rows


def model_rows(model: type[BaseModel], prefix: str = "") -> list[KeyRow]:
    """Every key of ``model`` and of the models it nests, depth first in field order."""
    return list(_rows(model, prefix, seen=(model,)))


def _rows(model: type[BaseModel], prefix: str, seen: tuple[type, ...]) -> Iterator[KeyRow]:
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = [(m, suffix) for m, suffix in _models_in(info.annotation) if m not in seen]
        yield KeyRow(
            key=key,
            type=_type_name(info.annotation),
            default=_default(info),
            range=_range(info),
            description=_description(info, nested),
            section=bool(nested),
        )
        for sub, suffix in nested:
            yield from _rows(sub, f"{key}{suffix}.", (*seen, sub))


def _description(info: FieldInfo, nested: list[tuple[type[BaseModel], str]]) -> str:
    """The field's own description, else (for a section) its model's docstring's first
    paragraph."""
    text = info.description or ""
    if not text and len(nested) == 1:
        text = (nested[0][0].__doc__ or "").split("\n\n")[0]
    return " ".join(text.split())


def _models_in(annotation: Any, suffix: str = "") -> Iterator[tuple[type[BaseModel], str]]:
    """The models an annotation holds, with the key suffix their items take."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, suffix
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple, set):
        for arg in args:
            yield from _models_in(arg, suffix + "[]")
    elif origin is dict:
        yield from _models_in(args[-1], suffix + "{}")
    else:  # unions, Annotated
        for arg in args:
            yield from _models_in(arg, suffix)


def _type_name(annotation: Any) -> str:
    """A type as a recipe writer reads it: ``int``, ``float or null``, ``a | b`` choices."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        if len(args) == 1:
            return f"`{args[0]}`"
        return "one of " + ", ".join(
            f"`{a if isinstance(a, str) else json.dumps(a)}`" for a in args
        )
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        nullable = type(None) in args
        return " or ".join(parts) + (" or null" if nullable else "")
    if origin in (list, tuple, set):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map {_type_name(args[0])} → {_type_name(args[1])}" if args else "map"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "see below"
    dumped = json.dumps(json_ready(value), ensure_ascii=False)
    return f"`{dumped}`"


def _range(info: FieldInfo) -> str:
    bounds = []
    for item in info.metadata:
        for kind, attr, symbol in _BOUNDS:
            if isinstance(item, kind):
                bounds.append(f"{symbol} {getattr(item, attr):g}")
    return ", ".join(bounds)


def _cell(text: str) -> str:
    """Text for a table cell: a ``|`` outside code spans would end the cell."""
    spans = text.split("`")
    return "`".join(s if i % 2 else s.replace("|", r"\|") for i, s in enumerate(spans))


def _table(rows: list[KeyRow]) -> list[str]:
    lines = ["| key | type | default | range | description |", "|---|---|---|---|---|"]
    for row in rows:
        key = f"**`{row.key}`**" if row.section else f"`{row.key}`"
        cells = [key, row.type, row.default, row.range, row.description]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def recipe_reference() -> str:
    """``docs/reference/recipe.md``: every recipe key, by section, then the loss names and
    the defaults that depend on ``task.kind``."""
    rows = model_rows(Recipe)
    top = [r for r in rows if "." not in r.key and not r.section]
    lines = [
        "# Recipe keys",
        "",
        "<!-- Generated by `python scripts/docs.py` from the pydantic schema "
        "(potstill.config.schema.Recipe); do not edit by hand. -->",
        "",
        "A recipe is YAML. Every key has a default, so a recipe names only what it changes;",
        "`key.sub=value` on the command line overrides any key, and the resolved recipe is",
        "saved as `runs/NAME/config.yaml`. Unknown keys are refused with the valid ones named.",
        "A key written `loss[].weight` is a key of each item of the list `loss`.",
        "",
        "## Top level",
        "",
        *_table(top),
    ]
    for section in (r for r in rows if "." not in r.key and r.section):
        below = [
            r
            for r in rows
            if r.key != section.key and r.key.split(".")[0].rstrip("[]{}") == section.key
        ]
        lines += ["", f"## `{section.key}`", "", section.description, "", *_table(below)]
    lines += ["", *_loss_names(), "", *_kind_defaults()]
    return "\n".join(lines) + "\n"


def _loss_names() -> list[str]:
    lines = [
        "## Loss names",
        "",
        "`loss[].loss` takes one of these (`potstill.losses.REGISTRY`); a loss's own",
        "parameters sit beside `weight` and `temperature` in its term.",
        "",
        "| loss | compares | needs the teacher | takes a temperature | parameters |",
        "|---|---|---|---|---|",
    ]
    for spec in REGISTRY.values():
        params = ", ".join(
            f"`{name}` (default {p.default:g}, in {'[' if p.low_closed else '('}"
            f"{p.low:g}, {p.high:g}))"
            for name, p in spec.params.items()
        )
        lines.append(
            f"| `{spec.name}` | {spec.kind} | {'yes' if spec.needs_teacher else 'no'} | "
            f"{'yes' if spec.tempered else 'no'} | {params or '–'} |"
        )
    return lines


def _kind_defaults() -> list[str]:
    lines = [
        "## Defaults that depend on `task.kind`",
        "",
        "A recipe that names no `loss` gets its kind's terms, and the `train` keys it leaves",
        "out come from its kind's row where there is one (the recipe's own keys win). Both are",
        "resolved at load and written into `config.yaml`.",
        "",
        "| task.kind | loss | train |",
        "|---|---|---|",
    ]
    for kind, terms in DEFAULT_LOSS.items():
        loss = " + ".join(
            f"{t.get('weight', 1.0):g} × {t['loss']}"
            + (f" (T={t['temperature']:g})" if t.get("temperature", 1.0) != 1.0 else "")
            + (f" (layers: {t['layers']})" if "layers" in t else "")
            for t in terms
        )
        train = DEFAULT_TRAIN.get(kind)
        settings = ", ".join(f"`{k}: {v:g}`" for k, v in train.items()) if train else "the schema's"
        lines.append(f"| `{kind}` | {loss} | {settings} |")
    return lines


def report_reference() -> str:
    """``docs/reference/report.md``: every field of ``report.json``."""
    rows = model_rows(Report)
    lines = [
        "# Report schema",
        "",
        "<!-- Generated by `python scripts/docs.py` from potstill.evaluation.report.schema; "
        "do not edit by hand. -->",
        "",
        f"`runs/NAME/report.json` is `potstill.Report` as JSON (schema version "
        f"{Report.model_fields['schema_version'].default}). Every number is optional: a",
        "number that could not be measured, or is not finite, is `null`. `models` maps a",
        "role (`teacher`, `student`, `baseline`) or any other name to a model entry, roles",
        "first. Read it back with `potstill.Report.load(path)`.",
        "",
        *_table(rows),
    ]
    return "\n".join(lines) + "\n"
