"""The contract pages (docs/reference/run-folder.md, docs/reference/cache.md) against the
code: every name they list is one the code writes, and every field the code writes is
named there. Static reads of the pages and of src/, no models."""

from __future__ import annotations

import ast
import dataclasses
import re
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from potstill.cache import codec, manifest
from potstill.train.checkpoint import TrainState

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "potstill"
RUN_FOLDER = ROOT / "docs" / "reference" / "run-folder.md"
CACHE = ROOT / "docs" / "reference" / "cache.md"
_EXTENSION = re.compile(r"\.\w+$")


def _text_blocks(page: Path) -> list[str]:
    return re.findall(r"^```text\n(.*?)^```$", page.read_text(encoding="utf-8"), re.M | re.S)


def _trees(page: Path) -> list[list[str]]:
    """The paths each ``runs/NAME/`` tree block of ``page`` lists, relative to its root:
    a line's first word, nested by indentation (a name ending in ``/`` is a folder)."""
    trees = []
    for block in _text_blocks(page):
        lines = block.splitlines()
        if not lines or not lines[0].startswith("runs/NAME/"):
            continue
        paths, parents = [], []  # parents: (indent, folder) of the open folders
        for line in lines[1:]:
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip())
            name = line.split()[0]
            while parents and parents[-1][0] >= indent:
                parents.pop()
            paths.append("/".join([*(p for _, p in parents), name.rstrip("/")]))
            if name.endswith("/"):
                parents.append((indent, name.rstrip("/")))
        trees.append(paths)
    return trees


@cache
def _source_strings() -> tuple[frozenset[str], tuple[re.Pattern[str], ...], frozenset[str]]:
    """Every string literal in src/ (and each of its path components); a pattern per
    f-string (its formatted values as wildcards) that fixes at least three characters of
    a name; and the extensions of the f-strings that fix nothing else (``f"{stage}.json"``)."""
    literals: set[str] = set()
    patterns = []
    named_by_stem: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
                literals.update(node.value.split("/"))
            elif isinstance(node, ast.JoinedStr):
                parts = [
                    re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in node.values
                ]
                fixed = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                core = _EXTENSION.sub("", fixed).strip("/-_ ")
                if len(core) >= 3:
                    patterns.append(re.compile("".join(parts)))
                elif _EXTENSION.fullmatch(fixed):
                    named_by_stem.add(fixed)
    return frozenset(literals), tuple(patterns), frozenset(named_by_stem)


def _written(name: str) -> bool:
    """Whether the code spells ``name`` (a file or folder name, or a path): as a literal,
    as a whole f-string, or as a literal stem in an f-string that adds only the extension
    (``teach.json``: the stage ``teach`` in ``f"{stage}.json"``)."""
    literals, patterns, named_by_stem = _source_strings()
    if name in literals or any(p.fullmatch(name) for p in patterns):
        return True
    extension = _EXTENSION.search(name)
    return (
        extension is not None
        and extension.group() in named_by_stem
        and name[: extension.start()] in literals
    )


def test_every_name_the_run_folder_page_lists_is_one_the_code_writes():
    trees = _trees(RUN_FOLDER)
    assert len(trees) >= 3 and sum(map(len, trees)) > 40  # the page's trees are really read
    unknown = []
    for path in (p for tree in trees for p in tree):
        parts = path.split("/")
        if not (_written(path) or all(_written(part) for part in parts)):
            unknown.append(path)
    assert not unknown, f"run-folder.md lists names no code in src/ writes: {unknown}"


def test_the_name_check_refuses_a_name_nobody_writes():
    assert _written("manifest.json") and _written("shard-00000.bin")
    assert _written("student-int8") and _written("journal-r1.json")
    assert not _written("weights.bin") and not _written("stage-log.txt")


def test_the_checkpoint_state_and_metrics_keys_are_on_the_run_folder_page():
    page = RUN_FOLDER.read_text(encoding="utf-8")
    keys = {f.name for f in dataclasses.fields(TrainState)}
    keys |= _metrics_keys()
    missing = sorted(k for k in keys if f"`{k}`" not in page)
    assert not missing, f"run-folder.md does not name: {missing}"


def _metrics_keys() -> set[str]:
    """The fixed keys of the metrics rows and events the training loop writes: its dict
    literals that hold a ``"model"`` key."""
    tree = ast.parse((SRC / "train" / "loop.py").read_text(encoding="utf-8"))
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            names = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if "model" in names:
                keys |= names
    # the optional keys, each added as {"key": value} when it applies
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and len(node.keys) == 1:
            key = node.keys[0]
            if isinstance(key, ast.Constant) and key.value in ("skipped", "heldout_loss"):
                keys.add(key.value)
    assert {"model", "step", "loss", "event", "from_step", "skipped"} <= keys
    return keys


def _manifest_models() -> list[type[BaseModel]]:
    return [
        value
        for value in vars(manifest).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value is not BaseModel
        and value.__module__ == manifest.__name__
    ]


def test_every_manifest_field_is_on_the_cache_page():
    page = CACHE.read_text(encoding="utf-8")
    models = _manifest_models()
    assert {m.__name__ for m in models} >= {"Manifest", "Source", "TopK", "Hidden", "Shard"}
    missing = sorted(
        f"{m.__name__}.{field}"
        for m in models
        for field in m.model_fields
        if f"`{field}`" not in page
    )
    assert not missing, f"cache.md does not name these manifest fields: {missing}"


def test_the_cache_page_gives_the_formats_and_the_codec_header_the_code_has():
    page = CACHE.read_text(encoding="utf-8")
    assert f"Format {manifest.FORMAT}" in page
    assert f'"format": {manifest.FORMAT}' in page
    assert f"`{manifest.TOP_K_CODEC}`" in page and codec.MAGIC.decode() in page
    assert f"version {codec.VERSION}" in page
    assert f"{codec._HEADER.size}-byte header" in page
    assert f"[{codec.LOGPROB_FLOOR:g}, 0]".replace("-", "−") in page
    # the header table: one row per field of the struct, ending where the header ends
    assert f"| {codec._HEADER.size - 4}–{codec._HEADER.size - 1} |" in page


def test_the_cache_page_names_the_files_the_cache_writes():
    page = CACHE.read_text(encoding="utf-8")
    for name in ("manifest.json", "shard-00000.bin", "hidden-00000.bin", "journal-r1.json"):
        assert name in page and _written(name), name


def test_no_code_cites_the_design_file_outside_the_repository():
    design = "DESIGN" + ".md"  # spelt apart, so this file does not cite it either
    cited = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("src", "tests", "bench", "scripts")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.is_file() and path.suffix in (".py", ".sh", ".md", ".toml", ".yaml")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if design in line
    ]
    assert not cited, f"these cite {design}, which is not in the repository: {cited}"
