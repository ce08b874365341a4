"""`potstill generate` end to end: a local tiny teacher (rows, dedup, rerun, Ctrl-C and
continue), an ``openai:MODEL`` teacher behind a real `potstill serve` and a scripted
server on loopback (the key never written or logged; 429s retried and counted), and bad
input as one line, exit 2, nothing overwritten."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from potstill.config import load_recipe
from potstill.generation import Engine
from potstill.models.load import load_causal_lm
from potstill.pipeline.run_dir import prepare_run_dir
from potstill.synth.generations import read_generations
from tests.conftest import run_cli
from tests.pipeline.test_generate import chat_teacher  # noqa: F401 (a fixture)
from tests.serve.conftest import MODEL, running
from tests.teachers.scripted import Script, scripted

PROMPTS = ["To be, or not", "The slings and arrows", "To be, or not", "No more", "To sleep"]
KEY = "sk-planted-7f3a9c1e5b"
KEY_ENV = "POTSTILL_TEST_GENERATE_KEY"


def write_recipe(tmp_path: Path, teacher: str, prompts: list[str] = PROMPTS, **generate) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    recipe = {
        "name": "gen",
        "runs_dir": str(tmp_path / "runs"),
        "teacher": teacher,
        "device": "cpu",
        "train": {"threads": 1},
        "generate": {
            "prompts": str(path),
            "n": 2,
            "max_tokens": 6,
            "batch_size": 2,
            "shard_rows": 2,
            **generate,
        },
    }
    out = tmp_path / "generate.yaml"
    out.write_text(yaml.safe_dump(recipe))
    return out


def generate_from(url: str, recipe: Path, capsys, *more: str) -> tuple[int, str, str]:
    """``potstill generate RECIPE`` against the endpoint at ``url``, with the test key's
    variable, and ``more`` overrides."""
    endpoint = [f"teach.endpoint.base_url={url}", f"teach.endpoint.api_key_env={KEY_ENV}"]
    return run_cli("generate", str(recipe), *endpoint, *more, capsys=capsys)


def last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_generate_writes_rows_and_a_rerun_keeps_them(tmp_path, capsys, chat_teacher):  # noqa: F811
    recipe = write_recipe(tmp_path, str(chat_teacher), system="Be brief.")
    code, out, err = run_cli("generate", str(recipe), capsys=capsys)
    assert code == 0, err
    path = tmp_path / "runs" / "gen" / "generations.jsonl"
    assert last_line(out).startswith(
        "generations: 8 rows (8 now, 0 kept, 1 duplicate prompts skipped)"
    )
    assert str(path) in out and "no chat template" not in err
    rows = read_generations(path)
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [
        (i, s) for i in (0, 1, 3, 4) for s in (0, 1)
    ]
    assert rows[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert all(len(r["teacher_sha256"]) == 64 and r["teacher"] == str(chat_teacher) for r in rows)
    manifest = json.loads((path.parent / "generations.manifest.json").read_text())
    assert manifest["counts"] == {
        "prompts": 5,
        "distinct_prompts": 4,
        "duplicates": 1,
        "n": 2,
        "rows": 8,
        "generated": 8,
        "kept": 0,
    }
    assert manifest["tokens"]["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert not (path.parent / "generations.parts").exists()

    code, out, err = run_cli("generate", str(recipe), capsys=capsys)
    assert code == 0, err
    assert "8 rows (0 now, 8 kept" in last_line(out)
    assert read_generations(path) == rows
    # What `generate` leaves does not block a later `run` of the recipe without --resume.
    prepare_run_dir(load_recipe(recipe), resume=False)


def test_an_interrupted_generate_continues_where_it_stopped(
    tmp_path,
    capsys,
    chat_teacher,  # noqa: F811
    monkeypatch,
):
    recipe = write_recipe(tmp_path, str(chat_teacher))
    whole = tmp_path / "whole"
    whole.mkdir()
    code, _, err = run_cli("generate", str(recipe), f"runs_dir={whole}", capsys=capsys)
    assert code == 0, err

    real = Engine.generate_each
    calls = []

    def interrupted(self, requests):
        calls.append(len(requests))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second chunk of rows
        return real(self, requests)

    monkeypatch.setattr(Engine, "generate_each", interrupted)
    code, _, err = run_cli("generate", str(recipe), capsys=capsys)
    assert code == 130 and "rerun the same command to continue" in err
    folder = tmp_path / "runs" / "gen"
    assert not (folder / "generations.jsonl").exists()
    shards = sorted((folder / "generations.parts").glob("shard-*.jsonl"))
    assert [len(s.read_text().splitlines()) for s in shards] == [2]

    monkeypatch.setattr(Engine, "generate_each", real)
    code, out, err = run_cli("generate", str(recipe), capsys=capsys)
    assert code == 0, err
    assert "8 rows (6 now, 2 kept" in last_line(out)
    # Sampled at temperature 0.7, and still the rows of the uninterrupted run.
    expected = read_generations(whole / "gen" / "generations.jsonl")
    assert read_generations(folder / "generations.jsonl") == expected


def test_a_teacher_without_chat_template_gets_plain_prompts(tmp_path, capsys, tiny_teacher_dir):
    code, _out, err = run_cli(
        "generate", str(write_recipe(tmp_path, str(tiny_teacher_dir))), capsys=capsys
    )
    assert code == 0, err
    assert "no chat template: prompts are plain 'role: content' lines" in err
    manifest = json.loads((tmp_path / "runs" / "gen" / "generations.manifest.json").read_text())
    assert manifest["plain_prompt"] is True and manifest["settings"]["prompt_format"] == "plain"


def outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["generate.temperature=0.9"], "temperature: 0.7 -> 0.9"),
        (["generate.prompts=MISSING"], "generate.prompts: MISSING is not a file"),
        (["generate.n=0"], "generate.n = 0: input should be greater than or equal to 1"),
        (["generate.prompts=EMPTY"], "field 'prompt' is empty"),
        (
            ["teacher=openai:gpt-4o-mini", f"teach.endpoint.api_key_env={KEY_ENV}_UNSET"],
            f"the environment variable {KEY_ENV}_UNSET is not set or empty",
        ),
        (['teacher="openai:"'], "names no model: write openai:MODEL"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_is_overwritten(
    tmp_path, capsys, tiny_teacher_dir, change, message, monkeypatch
):
    monkeypatch.delenv(f"{KEY_ENV}_UNSET", raising=False)
    recipe = write_recipe(tmp_path, str(tiny_teacher_dir))
    code, _, err = run_cli("generate", str(recipe), capsys=capsys)
    assert code == 0, err
    before = outputs(tmp_path / "runs")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    change = [
        c.replace("MISSING", str(tmp_path / "missing.jsonl")).replace("EMPTY", str(empty))
        for c in change
    ]
    message = message.replace("MISSING", str(tmp_path / "missing.jsonl"))
    code, out, err = run_cli("generate", str(recipe), *change, capsys=capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert "Traceback" not in err and not out
    assert outputs(tmp_path / "runs") == before


def test_openai_teacher_on_a_real_server_never_writes_or_logs_the_key(
    tmp_path,
    capsys,
    caplog,
    chat_teacher,  # noqa: F811
    monkeypatch,
    one_thread,
):
    caplog.set_level(logging.DEBUG)  # every library's debug lines too
    monkeypatch.setenv(KEY_ENV, KEY)
    recipe = write_recipe(tmp_path, f"openai:{MODEL}", temperature=0.0, n=1)
    engine = Engine(*load_causal_lm(str(chat_teacher)), max_batch=4)
    engine.start()
    with running(engine, api_key=KEY) as url:
        code, out, err = generate_from(url, recipe, capsys)
    assert code == 0, err
    assert "4 rows (4 now, 0 kept, 1 duplicate prompts skipped)" in last_line(out)
    assert ", 0 retries" in last_line(out)
    folder = tmp_path / "runs" / "gen"
    rows = read_generations(folder / "generations.jsonl")
    assert [r["teacher"] for r in rows] == [f"openai:{MODEL}"] * 4
    assert all(r["response"] and r["completion_tokens"] >= 1 for r in rows)
    manifest = json.loads((folder / "generations.manifest.json").read_text())
    assert manifest["usage"]["requests"] == 4 and manifest["usage"]["replies"] == 4
    assert manifest["endpoint"]["api_key_env"] == KEY_ENV
    # The key was used (the server requires it) and appears nowhere.
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.yaml", "generations.jsonl"}
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    assert caplog.records  # the capture worked
    for text in (out, err, caplog.text):
        assert KEY not in text


def test_429s_are_retried_with_backoff_and_counted(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    script = Script(statuses=[429, 429])
    recipe = write_recipe(tmp_path, "openai:scripted", n=1)
    with scripted(script) as url:
        code, out, err = generate_from(url, recipe, capsys, "teach.endpoint.concurrency=1")
    assert code == 0, err
    assert "4 rows (4 now" in last_line(out) and ", 2 retries" in last_line(out)
    folder = tmp_path / "runs" / "gen"
    usage = json.loads((folder / "generations.manifest.json").read_text())["usage"]
    assert usage["requests"] == 6 and usage["retries"] == 2 and usage["replies"] == 4
    assert usage["completion_tokens"] == 12  # the scripted server's 3 per reply
    assert len(script.arrivals) == 6 and script.arrivals[2] - script.arrivals[0] >= 0.25
    rows = read_generations(folder / "generations.jsonl")
    distinct = ["To be, or not", "The slings and arrows", "No more", "To sleep"]
    assert [r["response"] for r in rows] == [f"reply to {p}" for p in distinct]


def test_a_busy_real_server_answers_429_and_every_row_is_still_written(
    tmp_path,
    capsys,
    chat_teacher,  # noqa: F811
    monkeypatch,
    one_thread,
):
    monkeypatch.setenv(KEY_ENV, KEY)
    recipe = write_recipe(tmp_path, f"openai:{MODEL}", n=2, max_tokens=32)
    engine = Engine(*load_causal_lm(str(chat_teacher)), max_batch=1, max_queue=1)
    engine.start()
    with running(engine) as url:
        code, _out, err = run_cli(
            "generate",
            str(recipe),
            f"teach.endpoint.base_url={url}",
            "teach.endpoint.api_key_env=null",
            "teach.endpoint.concurrency=4",
            "teach.endpoint.max_retries=10",
            capsys=capsys,
        )
    assert code == 0, err
    usage = json.loads((tmp_path / "runs" / "gen" / "generations.manifest.json").read_text())
    usage = usage["usage"]
    # One row decodes while one waits; the other two requests in flight get HTTP 429.
    assert usage["retries"] >= 1
    assert usage["replies"] == 8 and usage["requests"] == usage["replies"] + usage["retries"]
    assert len(read_generations(tmp_path / "runs" / "gen" / "generations.jsonl")) == 8


@pytest.mark.slow
def test_the_bundled_teacher_served_and_asked_through_openai_writes_what_it_writes_locally(
    tmp_path, capsys, monkeypatch, one_thread
):
    """`potstill serve`'s app over the real bundled SmolLM2, `generate` through `openai:`:
    greedy answers equal the same model's answers generated locally."""
    monkeypatch.setenv(KEY_ENV, KEY)
    bundled = "bundled:smollm2-135m-instruct"
    for side in ("served", "local"):
        (tmp_path / side).mkdir()
    served = write_recipe(tmp_path / "served", f"openai:{MODEL}", temperature=0.0, n=1)
    local = write_recipe(tmp_path / "local", bundled, temperature=0.0, n=1)
    model, tokenizer = load_causal_lm(bundled)
    engine = Engine(model, tokenizer, max_batch=4)
    engine.start()
    with running(engine, api_key=KEY) as url:
        code, _out, err = generate_from(url, served, capsys, "generate.max_tokens=16")
    assert code == 0, err
    code, _, err = run_cli("generate", str(local), "generate.max_tokens=16", capsys=capsys)
    assert code == 0, err
    over_http = read_generations(tmp_path / "served" / "runs" / "gen" / "generations.jsonl")
    at_home = read_generations(tmp_path / "local" / "runs" / "gen" / "generations.jsonl")
    assert len(over_http) == len(at_home) == 4
    assert [r["response"] for r in over_http] == [r["response"] for r in at_home]
    assert all(r["completion_tokens"] >= 1 and r["response"].strip() for r in over_http)
