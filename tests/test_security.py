"""Safe by default: an API key is used and never written or shown; no pickle is unpickled
with code; no model folder's own code runs unless the user says so; the server listens on
loopback unless told otherwise."""

from __future__ import annotations

import ast
import functools
import inspect
import json
import logging
import secrets
import shutil
import traceback
from pathlib import Path

import pytest
import typer
import yaml

import potstill
from potstill.util.errors import PotstillError
from tests.conftest import free_port, run_cli
from tests.teachers.scripted import Script, scripted
from tests.test_cli_generate import write_recipe

SRC = Path(potstill.__file__).parent
KEY_ENV = "POTSTILL_TEST_KEY"


@functools.cache
def python_files() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(SRC.rglob("*.py"))]


def calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def dotted(node: ast.AST) -> str:
    """``torch.serialization.load`` of the expression naming a called function."""
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


# --- the API key ---------------------------------------------------------------------------


@pytest.fixture
def key(monkeypatch) -> str:
    planted = f"sk-planted-{secrets.token_hex(16)}"
    monkeypatch.setenv(KEY_ENV, planted)
    return planted


def generate_recipe(tmp_path: Path) -> Path:
    """test_cli_generate's recipe on a scripted endpoint that reads the key from KEY_ENV,
    one request at a time and none retried."""
    path = write_recipe(
        tmp_path, "openai:scripted", ["To be", "or not"], n=1, max_tokens=4, shard_rows=1
    )
    recipe = yaml.safe_load(path.read_text())
    endpoint = {"api_key_env": KEY_ENV, "concurrency": 1, "max_retries": 0, "timeout_s": 5}
    recipe["teach"] = {"endpoint": endpoint}
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_planted_api_key_is_used_and_never_written_or_shown(tmp_path, capsys, caplog, key):
    """`potstill generate` against an endpoint that refuses (401, echoing the key back), one
    that fails (500), a closed port, and one that answers: the key reaches the server and
    nowhere else, not in the run folder, the output, the logs, or the exception."""
    caplog.set_level(logging.DEBUG)  # every library's debug lines too
    recipe = generate_recipe(tmp_path)
    shown: list[str] = []

    def generate(url: str) -> tuple[int, str, str]:
        code, out, err = run_cli(
            "generate", str(recipe), f"teach.endpoint.base_url={url}", capsys=capsys
        )
        shown.extend([out, err])
        return code, out, err

    refusing, failing, answering = Script(statuses=[401]), Script(statuses=[500]), Script()
    with scripted(refusing) as url:
        code, _, err = generate(url)
    assert code == 2 and f"refused the key in ${KEY_ENV} (HTTP 401" in err
    assert "you sent Bearer ***" in err  # the server's echo of the key, scrubbed
    with scripted(failing) as url:
        code, _, err = generate(url)
    assert code == 2 and "HTTP 500" in err and "you sent Bearer ***" in err
    code, _, err = generate(f"http://127.0.0.1:{free_port()}/v1")
    assert code == 2 and "cannot connect" in err
    with scripted(answering) as url:
        code, out, err = generate(url)
    assert code == 0, err
    assert "2 rows" in out

    # The key was read and sent...
    sent = refusing.authorizations + failing.authorizations + answering.authorizations
    assert sent and all(a == f"Bearer {key}" for a in sent)
    # ...and the API's own exception carries no trace of it, whole chain included.
    from potstill.config import load_recipe
    from potstill.pipeline import generate_only

    with scripted(Script(statuses=[401])) as url:
        cfg = load_recipe(recipe, [f"teach.endpoint.base_url={url}", "name=api"])
        with pytest.raises(PotstillError) as raised:
            generate_only(cfg)
    shown.append("".join(traceback.format_exception(raised.value)))
    shown.append(repr(raised.value))

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"config.yaml", "generations.jsonl", "generations.manifest.json"} <= {
        p.name for p in files
    }
    for path in files:
        assert key.encode() not in path.read_bytes(), path
    assert caplog.records  # the capture worked
    for text in [*shown, caplog.text]:
        assert key not in text
        assert key[len("sk-planted-") :] not in text  # nor its secret part alone


# --- pickles and remote code --------------------------------------------------------------------


def test_torch_load_always_passes_weights_only_true():
    found = []
    for path, tree in python_files():
        for call in calls(tree):
            if dotted(call.func) in ("torch.load", "torch.serialization.load"):
                found.append(path.name)
                weights_only = [k for k in call.keywords if k.arg == "weights_only"]
                assert weights_only, f"{path}:{call.lineno}: torch.load without weights_only"
                value = weights_only[0].value
                assert isinstance(value, ast.Constant) and value.value is True, (
                    f"{path}:{call.lineno}: torch.load with weights_only other than True"
                )
    assert found  # the scan sees the calls there are (checkpoints, bundled conversion)


def test_nothing_unpickles_or_loads_unsafe_yaml():
    for path, tree in python_files():
        for call in calls(tree):
            name = dotted(call.func)
            assert not name.startswith(("pickle.", "cPickle.", "dill.")), f"{path}:{call.lineno}"
            assert name not in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"), (
                f"{path}:{call.lineno}: {name} (use yaml.safe_load)"
            )


def test_trust_remote_code_is_only_ever_the_users_flag():
    """Never a literal True; every parameter of that name defaults to False; the one CLI
    flag (serve's --trust-remote-code) is off unless given."""
    for path, tree in python_files():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value), (
                    f"{path}:{node.value.lineno}: trust_remote_code=True"
                )
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == "trust_remote_code":
                        assert not (isinstance(v, ast.Constant) and v.value), f"{path}:{v.lineno}"
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
                defaults = [None] * (len(args.posonlyargs) + len(args.args) - len(args.defaults))
                defaults += [*args.defaults, *args.kw_defaults]
                for param, default in zip(params, defaults, strict=True):
                    if param.arg == "trust_remote_code":
                        assert isinstance(default, ast.Constant) and default.value is False, (
                            f"{path}:{node.lineno}: {node.name}'s trust_remote_code must "
                            "default to False"
                        )
    from potstill.cli import app

    serve = typer.main.get_command(app).commands["serve"]
    (flag,) = [p for p in serve.params if p.name == "trust_remote_code"]
    assert flag.default is False and flag.opts == ["--trust-remote-code"]


def test_a_folder_with_code_loads_without_running_it(tmp_path, tiny_teacher_dir):
    """A known architecture with an ``auto_map`` to the folder's code loads with
    transformers' own class; a model type only its code knows is refused. Neither runs
    the code."""
    from potstill.models.load import load_causal_lm

    folder = tmp_path / "model"
    shutil.copytree(tiny_teacher_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "planted.Config", "AutoModelForCausalLM": "planted.LM"}
    (folder / "config.json").write_text(json.dumps(config))
    mark = tmp_path / "RAN"
    (folder / "planted.py").write_text(f"open({str(mark)!r}, 'w').close()\n")

    model, _ = load_causal_lm(str(folder))
    assert type(model).__module__.startswith("transformers.models.llama")
    config["model_type"] = "planted"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PotstillError, match="needs its own Python code"):
        load_causal_lm(str(folder))
    assert not mark.exists()


# --- the server ---------------------------------------------------------------------------------


def test_serve_listens_on_loopback_by_default(capsys, monkeypatch):
    from potstill.cli import app
    from potstill.serve import server

    command = typer.main.get_command(app).commands["serve"]
    (host,) = [p for p in command.params if p.name == "host"]
    assert host.default == "127.0.0.1"
    assert inspect.signature(server.serve).parameters["host"].default == "127.0.0.1"

    asked = []

    def bind(host: str, port: int):  # record the address, and stop before a model loads
        asked.append((host, port))
        raise PotstillError(f"stopped before listening on {host}:{port}")

    monkeypatch.setattr(server, "bind", bind)
    code, _, err = run_cli("serve", "no-such-model", "--device", "cpu", capsys=capsys)
    assert code == 2 and "stopped before listening" in err
    assert asked == [("127.0.0.1", 8000)]
    assert server.is_loopback(asked[0][0])
