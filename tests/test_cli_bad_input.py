"""Bad input through the real CLI, one kind per case: broken data, broken recipes, paths
that cannot be read or written, corrupt or foreign teacher caches, unsafe model folders.

Every case asserts the contract (docs/reference/run-folder.md): exit code 2; one
``error: ...`` line on stderr, the last one, naming the offending thing; no traceback;
nothing printed on stdout; every file that existed before (the recipe, the data, a taught
run and its cache) left with the same bytes and mtime; and nothing new beyond what the
case allows (no temporary files).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors
import torch
import yaml

from tests.conftest import TEXT, llama_folder, make_tokenizer, run_cli, tiny_recipe

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
as_root = pytest.mark.skipif(ROOT, reason="root reads and writes through any permission bits")


@dataclass
class Models:
    """Model folders a case points at, built once for the module."""

    nan_teacher: Path  # the tiny teacher with a NaN weight
    inf_teacher: Path  # ... with an infinite one
    other_teacher: Path  # another teacher of the same vocabulary
    other_vocab: Path  # a student of another vocabulary
    pickled: Path  # weights only as pytorch_model.bin
    remote_code: Path  # config.json with auto_map to code in the folder


@dataclass
class Workspace:
    """A test's folder (the working directory): the recipe, a taught run ``runs/tiny``
    with its cache, and the module's model folders."""

    root: Path
    recipe: Path
    teacher: Path
    corpus: Path
    models: Models

    @property
    def cache(self) -> Path:
        return self.root / "runs" / "tiny" / "cache"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def manifest(self, change: Callable[[dict], None]) -> None:
        path = self.cache / "manifest.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data, indent=1))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_teacher_dir) -> Models:
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("models")

    def broken(name: str, value: float) -> Path:
        folder = root / name
        shutil.copytree(tiny_teacher_dir, folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            model.model.layers[1].mlp.down_proj.weight[0, 0] = value
        model.save_pretrained(folder)
        return folder

    pickled = root / "pickled"
    pickled.mkdir()
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    model.config.save_pretrained(pickled)
    make_tokenizer().save_pretrained(pickled)

    remote = root / "remote"
    shutil.copytree(tiny_teacher_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    config["model_type"] = "planted"
    config["auto_map"] = {"AutoConfig": "planted.Config", "AutoModelForCausalLM": "planted.LM"}
    (remote / "config.json").write_text(json.dumps(config))
    # Code that leaves a mark if anything ever runs it.
    (remote / "planted.py").write_text(f"open({str(root / 'RAN')!r}, 'w').close()\n")
    return Models(
        nan_teacher=broken("nan", float("nan")),
        inf_teacher=broken("inf", float("inf")),
        other_teacher=llama_folder(root / "other_teacher", make_tokenizer(), layers=2),
        other_vocab=llama_folder(root / "other_vocab", make_tokenizer(vocab_size=280), layers=1),
        pickled=pickled,
        remote_code=remote,
    )


@pytest.fixture(scope="module")
def taught(tmp_path_factory, tiny_teacher_dir, corpus_file) -> Path:
    """A folder holding the recipe and its taught run, ``runs/tiny/{config.yaml,cache}``."""
    from potstill.config import load_recipe
    from potstill.pipeline import teach_only

    root = tmp_path_factory.mktemp("taught")
    recipe = root / "tiny.yaml"
    # runs_dir is relative, so that a copy of the taught run in each test's own folder is
    # the same run (its config.yaml matches the recipe)
    recipe.write_text(yaml.safe_dump(tiny_recipe("runs", tiny_teacher_dir, corpus_file, steps=2)))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        threads = torch.get_num_threads()
        teach_only(load_recipe(recipe))
        torch.set_num_threads(threads)
    finally:
        os.chdir(cwd)
    assert json.loads((root / "runs/tiny/cache/manifest.json").read_text())["complete"]
    return root


@pytest.fixture
def ws(taught, tmp_path, monkeypatch, tiny_teacher_dir, corpus_file, models) -> Iterator[Workspace]:
    shutil.copytree(taught, tmp_path, dirs_exist_ok=True)  # copy2: mtimes kept
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield Workspace(tmp_path, tmp_path / "tiny.yaml", tiny_teacher_dir, corpus_file, models)
    torch.set_num_threads(threads)
    for path in [tmp_path, *tmp_path.rglob("*")]:  # a case's chmod must not block cleanup
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


# --- the cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One kind of bad input.

    ``args`` writes what the case needs into the workspace and returns the CLI arguments;
    ``expect``: substrings of the error line; ``new``: globs (relative to the workspace) of
    files the failed command may leave (a new run's config.yaml...); ``arm``: applied after
    the snapshot, just around the command (a chmod, a simulated failure); ``logs``: the
    command may log progress before it fails (else stderr is the error line alone).
    """

    id: str
    args: Callable[[Workspace], list[str]]
    expect: tuple[str, ...]
    new: tuple[str, ...] = ()
    arm: Callable[[Workspace, pytest.MonkeyPatch], None] | None = None
    logs: bool = False
    marks: tuple = ()


def data_case(id: str, name: str, content: str | bytes, *expect: str, marks: tuple = ()) -> Case:
    """``potstill run RECIPE name=data data.path=FILE`` with FILE holding ``content``."""
    return Case(
        id,
        lambda w: ["run", str(w.recipe), "name=data", f"data.path={w.write(name, content)}"],
        expect,
        new=("runs/data/config.yaml",),
        logs=True,
        marks=marks,
    )


def disk_full_case(
    id: str, name: str, folder: str, arm: Callable[[Workspace, pytest.MonkeyPatch], None]
) -> Case:
    """``potstill distill RECIPE name=NAME`` from the taught cache while ``arm`` fills the
    disk as ``folder`` is saved: whatever the new run wrote may stay (it resumes)."""
    return Case(
        id,
        lambda w: ["distill", str(w.recipe), f"name={name}", f"teach.cache={w.cache}"],
        ("cannot write", f"{folder} (No space left on device)", "free some disk space"),
        new=(f"runs/{name}/**",),
        arm=arm,
        logs=True,
    )


def recipe_case(id: str, content: str | bytes, *expect: str) -> Case:
    """``potstill run FILE`` with FILE holding ``content`` as the recipe."""
    return Case(id, lambda w: ["run", str(w.write("bad.yaml", content))], expect)


def override_case(id: str, *overrides: str, expect: tuple[str, ...]) -> Case:
    """``potstill run RECIPE OVERRIDES`` on the good recipe."""
    return Case(id, lambda w: ["run", str(w.recipe), *overrides], expect)


def distill_case(
    id: str, damage: Callable[[Workspace], None], *expect: str, more: tuple[str, ...] = ()
) -> Case:
    """``potstill distill RECIPE`` on the taught run after ``damage`` to its cache."""

    def args(w: Workspace) -> list[str]:
        damage(w)
        return ["distill", str(w.recipe), *more]

    return Case(id, args, expect, logs=True)


def _truncate(w: Workspace) -> None:
    shard = w.cache / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-3])


def _flip(w: Workspace) -> None:
    shard = w.cache / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def _foreign(w: Workspace) -> None:
    """Another file in the shard's place, its checksum entered in the manifest: size and
    sha256 agree, the content is not a cache payload."""
    shard = w.cache / "shard-00000.bin"
    shard.write_bytes(b"GIF89a" + bytes(range(256)) * 4)
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()

    def point_at_it(m: dict) -> None:
        m["shards"][0]["fields"]["top_k"].update(sha256=digest, bytes=shard.stat().st_size)

    w.manifest(point_at_it)


def _set(*keys: str, value) -> Callable[[Workspace], None]:
    def change(m: dict) -> None:
        node = m
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return lambda w: w.manifest(change)


def _unfinished(w: Workspace) -> None:
    """As a killed ``teach`` leaves it: blocks planned that no shard holds yet."""

    def plan_more(m: dict) -> None:
        m["plan"].append(max(m["plan"]) + 1)
        m["complete"] = False

    w.manifest(plan_more)


def _unreadable_manifest(w: Workspace) -> None:
    (w.cache / "manifest.json").write_text('{"format": 2, "source": ')


def _chmod(relative: str, mode: int) -> Callable[[Workspace, pytest.MonkeyPatch], None]:
    return lambda w, mp: (w.root / relative).chmod(mode)


def _deny_reading(name: str) -> Callable[[Workspace, pytest.MonkeyPatch], None]:
    """Opening ``name`` fails as a file without read permission does (EACCES), for root too."""

    def arm(w: Workspace, mp: pytest.MonkeyPatch) -> None:
        real = io.open

        def denied(file, *args, **kwargs):
            if Path(str(file)).name == name:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real(file, *args, **kwargs)

        mp.setattr(io, "open", denied)

    return arm


def _deny_mkdir(w: Workspace, mp: pytest.MonkeyPatch) -> None:
    """Folders under ``locked/`` cannot be made, as in a folder without write permission."""
    real = os.mkdir

    def denied(path, *args, **kwargs):
        if "locked" in Path(path).parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    mp.setattr(os, "mkdir", denied)


def _disk_full(w: Workspace, mp: pytest.MonkeyPatch) -> None:
    """The disk fills up as the first cache shard is written."""
    real = os.replace

    def full(src, dst, *args, **kwargs):
        if Path(dst).name.startswith("shard-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    mp.setattr(os, "replace", full)


def _disk_full_in_torch_save(w: Workspace, mp: pytest.MonkeyPatch) -> None:
    """The disk fills up as a checkpoint's optimizer state is written: torch.save then
    says only what it said on a real full tmpfs (tests/util/test_io.py), and no room is
    left."""
    real = torch.save

    def full(obj, f, *args, **kwargs):
        if Path(str(f)).name == "optim.pt":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 2")
        return real(obj, f, *args, **kwargs)

    mp.setattr(torch, "save", full)
    mp.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 0))


def _disk_full_in_safetensors(w: Workspace, mp: pytest.MonkeyPatch) -> None:
    """The disk fills up as the student's weights are saved (safetensors' message on a real
    full tmpfs)."""
    import transformers.modeling_utils

    def full(*args, **kwargs):
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    mp.setattr(transformers.modeling_utils, "safe_save_file", full)


def _no_unpickling(w: Workspace, mp: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load ran on a model folder")

    mp.setattr(torch, "load", refuse)
    mp.setattr(torch.serialization, "load", refuse)


def _escape_by_symlink(w: Workspace) -> list[str]:
    (w.root / "elsewhere").mkdir()
    (w.root / "runs" / "out").symlink_to(w.root / "elsewhere")
    return ["run", str(w.recipe), "name=out"]


def _other_data(w: Workspace) -> list[str]:
    other = w.write("other.txt", TEXT[::-1] * 12)
    return ["distill", str(w.recipe), "name=od", f"data.path={other}", f"teach.cache={w.cache}"]


def _other_teacher(w: Workspace) -> list[str]:
    teacher = w.models.other_teacher
    return ["distill", str(w.recipe), "name=ot", f"teacher={teacher}", f"teach.cache={w.cache}"]


def _other_vocab(w: Workspace) -> list[str]:
    student = f"student={{model: {w.models.other_vocab}}}"
    return ["distill", str(w.recipe), "name=ov", student, f"teach.cache={w.cache}"]


DATA = [
    data_case(
        "data-malformed-jsonl-row",
        "rows.jsonl",
        '{"text": "fine"}\n{"text": oops}\n',
        "rows.jsonl:2: not valid JSON",
    ),
    data_case("data-empty-file", "empty.jsonl", "", "empty.jsonl", "found 0 tokens"),
    # 2 MB on one line, never closed: named by line, the row itself never echoed
    data_case(
        "data-huge-row",
        "huge.jsonl",
        '{"text": "fine"}\n{"text": "' + "x" * 2_000_000 + "\n",
        "huge.jsonl:2: not valid JSON",
    ),
    data_case(
        "data-text-not-a-string",
        "nested.jsonl",
        '{"text": {"body": "hello"}}\n',
        "nested.jsonl:1: field 'text' is an object, not a string",
    ),
    data_case(
        "data-text-is-null",
        "null.jsonl",
        '{"text": "fine"}\n{"text": null}\n',
        "null.jsonl:2: field 'text' is empty (null)",
    ),
    data_case(
        "data-binary-garbage",
        "garbage.jsonl",
        bytes(range(256)) * 8,
        "garbage.jsonl is not UTF-8 text (bad byte at offset 128)",
    ),
    data_case(
        "data-control-bytes",
        "control.jsonl",
        b"\x00\x01\x02\x7f{}\n\x00\x00\n",
        "control.jsonl:1: not valid JSON",
    ),
    data_case(
        "data-latin-1",
        "latin.jsonl",
        '{"text": "café au lait"}\n'.encode("latin-1"),
        "latin.jsonl is not UTF-8 text (bad byte at offset 13)",
        "convert it to UTF-8",
    ),
    data_case(
        "data-utf-16",
        "wide.txt",
        ("To be, or not to be. " * 40).encode("utf-16"),
        "wide.txt is not UTF-8 text (bad byte at offset 0)",
    ),
    data_case(
        "data-text-field-missing",
        "fields.jsonl",
        '{"body": "To be, or not to be"}\n',
        "fields.jsonl:1: no 'text' field",
        "data.text_field=body",
    ),
    data_case(
        "data-row-not-an-object",
        "lists.jsonl",
        '["To be, or not to be"]\n',
        "lists.jsonl:1: expected a JSON object",
        "got a list",
    ),
    data_case(
        "data-mixed-row-kinds",
        "mixed.jsonl",
        '{"text": "a text"}\n{"prompt": "a prompt", "response": "a response"}\n',
        "mixed.jsonl:2: a prompt/response row",
        "keep one kind of row per file",
    ),
    data_case(
        "data-unsupported-type",
        "corpus.xml",
        "<text>To be</text>",
        "corpus.xml: unsupported file type .xml",
    ),
]

RECIPES = [
    recipe_case("recipe-a-list", "- name: a\n- name: b\n", "bad.yaml must be a YAML mapping"),
    recipe_case("recipe-a-scalar", "just a sentence\n", "bad.yaml must be a YAML mapping"),
    recipe_case(
        "recipe-invalid-yaml", "name: x\ntrain: {steps: 3\n", "bad.yaml", "is not valid YAML"
    ),
    recipe_case(
        "recipe-not-utf8",
        "name: café\n".encode("latin-1"),
        "bad.yaml is not UTF-8 text (bad byte at offset 9)",
    ),
    recipe_case("recipe-unknown-key", "frobnicate: 1\n", "unknown key frobnicate"),
    override_case("recipe-near-miss-key", "train.setps=3", expect=("did you mean train.steps?",)),
    override_case(
        "recipe-steps-not-a-number",
        "train.steps=ten",
        expect=("train.steps = 'ten'", "valid integer"),
    ),
    override_case("recipe-lr-a-list", "train.lr=[1]", expect=("train.lr = [1]", "valid number")),
    override_case(
        "recipe-zero-steps", "train.steps=0", expect=("train.steps = 0", "greater than or equal")
    ),
    override_case(
        "recipe-negative-steps",
        "train.steps=-5",
        expect=("train.steps = -5", "greater than or equal"),
    ),
    override_case(
        "recipe-unknown-loss",
        "loss=[{loss: forward_kld}]",
        expect=("loss.0.loss = 'forward_kld'", "forward_kl"),
    ),
    override_case("override-missing-key", "nosuch.key=3", expect=("unknown key nosuch",)),
    override_case("override-not-key-value", "train.steps", expect=("'train.steps'", "key=value")),
]

PATHS = [
    Case("path-missing-recipe", lambda w: ["run", "nope.yaml"], ("recipe nope.yaml not found",)),
    Case(
        "path-missing-data",
        lambda w: ["run", str(w.recipe), "name=data", "data.path=nope.jsonl"],
        ("data.path nope.jsonl does not exist",),
        new=("runs/data/config.yaml",),
        logs=True,
    ),
    Case(
        "path-missing-teacher",
        lambda w: ["run", str(w.recipe), "name=t", "teacher=/no/such/teacher"],
        ("model /no/such/teacher not found",),
        new=("runs/t/config.yaml",),
        logs=True,
    ),
    Case(
        "path-unreadable-recipe",
        lambda w: ["run", str(w.recipe)],
        ("tiny.yaml cannot be read", "check its permissions"),
        arm=_chmod("tiny.yaml", 0o000),
        marks=(as_root,),
    ),
    Case(
        "path-unreadable-data",
        lambda w: ["run", str(w.recipe), "name=data", f"data.path={w.write('c.txt', TEXT * 12)}"],
        ("c.txt cannot be read", "check its permissions"),
        new=("runs/data/config.yaml",),
        arm=_chmod("c.txt", 0o000),
        logs=True,
        marks=(as_root,),
    ),
    Case(
        "path-unwritable-runs-dir",
        lambda w: ["run", str(w.recipe), "name=new"],
        ("cannot create the run folder runs/new", "writable"),
        arm=_chmod("runs", 0o500),
        marks=(as_root,),
    ),
    # The same three as root would meet them: the file system refuses (EACCES).
    Case(
        "path-recipe-read-refused",
        lambda w: ["run", str(w.recipe)],
        ("tiny.yaml cannot be read (Permission denied)",),
        arm=_deny_reading("tiny.yaml"),
    ),
    Case(
        "path-data-read-refused",
        lambda w: ["run", str(w.recipe), "name=data", f"data.path={w.write('c.txt', TEXT * 12)}"],
        ("data.path", "c.txt cannot be read (Permission denied)"),
        new=("runs/data/config.yaml",),
        arm=_deny_reading("c.txt"),
        logs=True,
    ),
    Case(
        "path-runs-dir-refused",
        lambda w: ["run", str(w.recipe), "runs_dir=locked/runs"],
        ("cannot create the run folder locked/runs/tiny (Permission denied)",),
        arm=_deny_mkdir,
    ),
    Case(
        "path-disk-full",
        lambda w: ["teach", str(w.recipe), "name=full"],
        ("cannot write", "shard-00000.bin (No space left on device)", "free some disk space"),
        # a valid, resumable cache of no shards: a rerun continues it
        new=("runs/full/config.yaml", "runs/full/cache/manifest.json", "runs/full/data/*"),
        arm=_disk_full,
        logs=True,
    ),
    disk_full_case(
        "path-disk-full-checkpoint", "fc", "checkpoints/student", _disk_full_in_torch_save
    ),
    disk_full_case("path-disk-full-student", "fs", "runs/fs/student", _disk_full_in_safetensors),
    override_case("name-dot-dot", "name=../x", expect=("name = '../x'", "plain folder name")),
    override_case(
        "name-absolute", "name=/tmp/abs", expect=("name = '/tmp/abs'", "plain folder name")
    ),
    override_case(
        "name-climbs-out", "name=a/../../b", expect=("name = 'a/../../b'", "plain folder name")
    ),
    Case("name-symlink-out", _escape_by_symlink, ("run name 'out' leads outside runs/",)),
]

CACHES = [
    distill_case("cache-truncated-shard", _truncate, "shard-00000.bin is truncated"),
    distill_case("cache-flipped-bytes", _flip, "shard-00000.bin is corrupt (sha256 mismatch)"),
    distill_case("cache-foreign-file", _foreign, "shard-00000.bin does not decode", "magic"),
    distill_case(
        "cache-newer-format", _set("format", value=3), "manifest.json format 3", "reads formats 1"
    ),
    distill_case(
        "cache-older-codec",
        _set("fields", "top_k", "codec_version", value=0),
        "codec version 0",
        "rerun `potstill teach`",
    ),
    distill_case("cache-unreadable-manifest", _unreadable_manifest, "unreadable manifest.json"),
    distill_case("cache-incomplete", _unfinished, "is incomplete", "potstill teach"),
    Case(
        "cache-other-data",
        _other_data,
        ("was made with another dataset", "teach.cache"),
        new=("runs/od/config.yaml", "runs/od/data/*"),
        logs=True,
    ),
    Case(
        "cache-other-teacher",
        _other_teacher,
        ("was made with another teacher", "other_teacher"),
        new=("runs/ot/config.yaml", "runs/ot/data/*"),
        logs=True,
    ),
    Case(
        "cache-vocab-mismatch",
        _other_vocab,
        ("has another tokenizer than the teacher", "forward_kl compare token ids", "uld"),
        new=("runs/ov/config.yaml", "runs/ov/checkpoints/student.fingerprint"),
        logs=True,
    ),
    Case(
        "teacher-nan-logits-teach",
        lambda w: ["teach", str(w.recipe), "name=nan", f"teacher={w.models.nan_teacher}"],
        ("the teacher's logits hold NaN or infinite values",),
        new=("runs/nan/config.yaml", "runs/nan/cache/manifest.json", "runs/nan/data/*"),
        logs=True,
    ),
    Case(
        "teacher-inf-logits-live",
        lambda w: [
            "distill",
            str(w.recipe),
            "name=inf",
            f"teacher={w.models.inf_teacher}",
            "teach.enabled=false",
        ],
        ("the teacher's logits hold NaN or infinite values",),
        new=("runs/inf/config.yaml", "runs/inf/checkpoints/student.fingerprint", "runs/inf/data/*"),
        logs=True,
    ),
]

MODELS = [
    Case(
        "model-pickle-weights",
        lambda w: ["teach", str(w.recipe), "name=pk", f"teacher={w.models.pickled}"],
        ("pickled holds its weights as a pickle (pytorch_model.bin)", "safetensors"),
        new=("runs/pk/config.yaml",),
        arm=_no_unpickling,
        logs=True,
    ),
    Case(
        "model-remote-code",
        lambda w: ["teach", str(w.recipe), "name=rc", f"teacher={w.models.remote_code}"],
        ("remote needs its own Python code (config.json auto_map", "--trust-remote-code"),
        new=("runs/rc/config.yaml",),
        logs=True,
    ),
]

# A refused teach keeps the taught run's config.yaml; a refused distill leaves no owner file.
KNOWN = [
    Case(
        "teach-bad-data-keeps-config",
        lambda w: ["teach", str(w.recipe), f"data.path={w.write('rows.jsonl', '{oops}')}"],
        ("rows.jsonl:1: not valid JSON",),
        logs=True,
    ),
    Case(
        "failed-distill-leaves-no-fingerprint",
        _other_vocab,
        ("has another tokenizer than the teacher",),
        new=("runs/ov/config.yaml",),
        logs=True,
    ),
]

CASES = DATA + RECIPES + PATHS + CACHES + MODELS + KNOWN


# --- the test ----------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: (size, mtime_ns, sha256); symlinks not followed."""
    files = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            info = path.stat()
            files[str(path.relative_to(root))] = (
                info.st_size,
                info.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return files


def test_every_case_is_a_different_kind():
    assert len({c.id for c in CASES}) == len(CASES) >= 32


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case: Case, ws: Workspace, capsys):
    args = case.args(ws)
    before = snapshot(ws.root)
    with pytest.MonkeyPatch.context() as mp:
        if case.arm is not None:
            case.arm(ws, mp)
        try:
            code, out, err = run_cli(*args, capsys=capsys)
        finally:
            for path in (ws.recipe, ws.root / "c.txt", ws.root / "runs"):
                if path.exists():
                    path.chmod(0o755 if path.is_dir() else 0o644)

    assert code == 2, err
    assert "Traceback" not in err and 'File "' not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    if not case.logs:
        assert lines == errors, err
    line = errors[0]
    for expected in case.expect:
        assert expected in line, line
    assert len(line) < 600, "the error line echoes the input"
    assert out == ""
    assert not (ws.models.remote_code.parent / "RAN").exists(), "code from a model folder ran"

    after = snapshot(ws.root)
    changed = sorted(path for path in before if after.get(path) != before[path])
    assert not changed, f"existing outputs changed: {changed}"
    added = sorted(set(after) - set(before))
    left = [p for p in added if not any(fnmatch.fnmatch(p, glob) for glob in case.new)]
    assert not left, f"left behind: {left}"
    for path in added:
        assert not Path(path).name.startswith("."), f"a temporary file is left: {path}"
        if path.endswith(".json"):
            json.loads((ws.root / path).read_text())  # whole, not half-written
        if path.endswith(".yaml"):
            yaml.safe_load((ws.root / path).read_text())
