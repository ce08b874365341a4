"""Offline generation with no server: `Engine.generate` against ``model.generate``, and
`Engine.generate_each`'s per-row seeds against the same rows decoded alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from potstill.generation import Engine, EngineError, GenerationSettings, chat_text
from tests.conftest import make_tokenizer
from tests.serve.conftest import make_decisive_llama
from tests.serve.test_generation import generate_reference
from tests.synth.test_label import CHAT_TEMPLATE

PROMPTS = ["To be, or not", "The slings and arrows of outrageous fortune", "No"]


@pytest.fixture(scope="module")
def lm() -> tuple[Any, Any]:
    tokenizer = make_tokenizer()
    return make_decisive_llama(len(tokenizer)).eval(), tokenizer


@pytest.fixture
def engine(lm, one_thread) -> Iterator[Engine]:
    with Engine(*lm, max_batch=2) as started:
        yield started


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def test_greedy_generate_equals_model_generate(engine, lm):
    model, tokenizer = lm
    prompts = [ids_of(tokenizer, p) for p in PROMPTS]
    choices = engine.generate(prompts, GenerationSettings(max_tokens=10, sampling_temperature=0))
    assert [c.index for c in choices] == [0, 1, 2]
    for prompt, choice in zip(prompts, choices, strict=True):
        expected = generate_reference(model, tokenizer, prompt, 10)
        assert choice.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert choice.completion_tokens == len(expected)
    assert len({c.text for c in choices}) == 3
    assert engine.stats.largest_batch == 2  # three rows, two at a time


def test_n_choices_per_prompt_sample_with_seed_plus_row(engine, lm):
    _, tokenizer = lm
    prompt = ids_of(tokenizer, PROMPTS[0])
    sampled = GenerationSettings(max_tokens=8, sampling_temperature=1.5, seed=10)
    together = engine.generate([prompt], sampled, n=3)
    alone = [
        engine.generate(
            [prompt], GenerationSettings(max_tokens=8, sampling_temperature=1.5, seed=10 + i)
        )[0]
        for i in range(3)
    ]
    assert [c.text for c in together] == [c.text for c in alone]
    assert len({c.text for c in together}) > 1  # the seeds really differ


def test_each_row_keeps_its_text_whatever_shares_its_batch(lm, one_thread):
    _, tokenizer = lm
    rows = [
        (ids_of(tokenizer, text), GenerationSettings(6, sampling_temperature=1.2, seed=seed))
        for seed, text in enumerate(PROMPTS * 2)
    ]
    with Engine(*lm, max_batch=4) as engine:
        together = engine.generate_each(rows)
        assert engine.stats.batches == 2  # all six queued before a batch formed: 4 + 2
    with Engine(*lm, max_batch=1) as engine:
        alone = [engine.generate_each([row])[0] for row in rows]
    assert [c.text for c in together] == [c.text for c in alone]
    assert all(c.index == 0 and c.completion_tokens == 6 for c in together)
    assert together[0].text != together[3].text  # same prompt, other seed


def test_waiting_rows_join_a_running_batch_and_write_what_they_write_alone(lm, one_thread):
    """Continuous batching: when a row finishes, a waiting one takes its place (its
    prompt run once, its cache merged in, left-padded), and every row's greedy text is
    still ``model.generate``'s."""
    model, tokenizer = lm
    lengths = [2, 12, 9, 5]  # the short rows finish first and make room
    prompts = [*PROMPTS, "Whether 'tis nobler in the mind"]
    rows = [
        (ids_of(tokenizer, text), GenerationSettings(n, sampling_temperature=0))
        for text, n in zip(prompts, lengths, strict=True)
    ]
    with Engine(*lm, max_batch=2) as engine:
        choices = engine.generate_each(rows)
        assert engine.stats.batches == 1 and engine.stats.joined == 2
        assert engine.stats.rows == 4 and engine.stats.largest_batch == 2
    for (prompt, settings), choice in zip(rows, choices, strict=True):
        expected = generate_reference(model, tokenizer, prompt, settings.max_tokens)
        assert choice.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert choice.completion_tokens == len(expected)


def test_stop_strings_finish_rows(engine, lm):
    _, tokenizer = lm
    prompt = ids_of(tokenizer, PROMPTS[1])
    greedy = GenerationSettings(max_tokens=12, sampling_temperature=0)
    text = engine.generate([prompt], greedy)[0].text
    stop = text[3:5]
    cut = engine.generate([prompt], GenerationSettings(12, sampling_temperature=0, stop=(stop,)))
    assert cut[0].text == text[: text.index(stop)] and cut[0].finish_reason == "stop"


def test_misuse_is_refused(lm):
    settings = GenerationSettings(max_tokens=2, sampling_temperature=0)
    engine = Engine(*lm)
    with pytest.raises(EngineError, match="not running"):
        engine.generate([[1, 2]], settings)
    with engine:
        with pytest.raises(ValueError, match="every prompt needs a token"):
            engine.generate([[]], settings)
        with pytest.raises(ValueError):
            engine.generate([[1]], settings, n=0)

        async def inside_a_loop() -> None:
            engine.generate([[1]], settings)

        with pytest.raises(RuntimeError, match="use submit"):
            asyncio.run(inside_a_loop())
        assert engine.generate([[1]], settings)[0].completion_tokens == 2  # still works


def test_chat_text_uses_the_template_or_plain_lines():
    tokenizer = make_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    plain = chat_text(tokenizer, messages)
    assert plain.text == "system: Be brief.\nuser: Hi\nassistant:" and plain.add_special_tokens
    tokenizer.chat_template = CHAT_TEMPLATE
    templated = chat_text(tokenizer, messages)
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert templated.text == expected and templated.templated
    assert not templated.add_special_tokens
