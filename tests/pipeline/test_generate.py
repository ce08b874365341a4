"""The generate stage: prompts read with ``generate``'s own key names in every error, and a
local teacher and the same model behind a real `potstill serve` (``openai:MODEL``)
writing the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import potstill
from potstill.generation import Engine
from potstill.models.load import load_causal_lm
from potstill.pipeline.generate import read_prompts
from potstill.synth.generations import read_generations
from potstill.synth.settings import GenerateConfig
from potstill.util.errors import PotstillError
from tests.conftest import make_tokenizer
from tests.serve.conftest import MODEL, make_decisive_llama, running
from tests.synth.test_label import CHAT_TEMPLATE

PROMPTS = ["To be, or not", "The slings and arrows", "No more", "To sleep"]


@pytest.fixture(scope="module")
def chat_teacher(tmp_path_factory) -> Path:
    """The decisive tiny Llama (varied greedy text) with a chat template."""
    folder = tmp_path_factory.mktemp("generate_teacher")
    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    make_decisive_llama(len(tokenizer)).save_pretrained(folder)
    return folder


def test_prompt_errors_name_the_generate_keys(tmp_path):
    with pytest.raises(PotstillError, match=r"^generate\.prompts is not set"):
        read_prompts(GenerateConfig())
    with pytest.raises(PotstillError, match=r"generate\.prompts: .*missing\.jsonl is not a file"):
        read_prompts(GenerateConfig(prompts=str(tmp_path / "missing.jsonl")))
    table = tmp_path / "prompts.csv"
    table.write_text("question\nWhy?\n")
    with pytest.raises(PotstillError) as error:
        read_prompts(GenerateConfig(prompts=str(table)))
    assert "no 'prompt' field" in str(error.value)
    assert "set generate.prompt_field=question" in str(error.value)
    assert read_prompts(GenerateConfig(prompts=str(table), prompt_field="question")).texts == [
        "Why?"
    ]
    lines = tmp_path / "prompts.txt"
    lines.write_text("First?\n\n  Second?  \n")
    assert read_prompts(GenerateConfig(prompts=str(lines))).texts == ["First?", "Second?"]


def test_shipped_prompts_and_max_prompts(tmp_path):
    texts = read_prompts(GenerateConfig(prompts="shipped:pang-lee-polarity/test", max_prompts=3))
    assert len(texts) == 3 and all(t.strip() for t in texts.texts)


def test_a_served_model_writes_the_rows_its_local_self_writes(
    tmp_path, chat_teacher, monkeypatch, one_thread
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    recipe = {
        "runs_dir": str(tmp_path / "runs"),
        "device": "cpu",
        "generate": {
            "prompts": str(prompts),
            "system": "Be brief.",
            "max_tokens": 8,
            "temperature": 0.0,
            "batch_size": 3,
        },
    }
    local = potstill.generate(recipe, name="local", teacher=str(chat_teacher))
    monkeypatch.setenv("POTSTILL_TEST_SERVE_KEY", "sk-pipeline-key")
    engine = Engine(*load_causal_lm(str(chat_teacher)))
    engine.start()
    with running(engine, api_key="sk-pipeline-key") as url:
        served = potstill.generate(
            recipe,
            name="served",
            teacher=f"openai:{MODEL}",
            teach__endpoint__base_url=url,
            teach__endpoint__api_key_env="POTSTILL_TEST_SERVE_KEY",
        )
    local_rows, served_rows = read_generations(local.path), read_generations(served.path)
    assert len(local_rows) == len(served_rows) == 4
    fields = ("prompt_id", "prompt", "messages", "response", "finish_reason", "prompt_tokens")
    for mine, theirs in zip(local_rows, served_rows, strict=True):
        assert {k: mine[k] for k in fields} == {k: theirs[k] for k in fields}
        assert mine["completion_tokens"] == theirs["completion_tokens"]
        assert mine["teacher_sha256"] is not None and theirs["teacher_sha256"] is None
    assert len({r["response"] for r in local_rows}) == 4
    assert served.usage["requests"] == 4 and served.usage["retries"] == 0
    assert served.usage["completion_tokens"] == sum(r["completion_tokens"] for r in served_rows)
