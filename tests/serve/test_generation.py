"""What the server generates, checked through a real uvicorn server with the official
``openai`` client against independent references: ``model.generate``, the same prompts
one by one, and a float64 forward pass for the log-probabilities."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from potstill.generation.text import TokenText
from potstill.serve import Engine
from tests.serve.conftest import MODEL, post_stream, running

PROMPTS = ["To be, or not", "The slings and arrows of outrageous fortune", "No"]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "To be?"}]


def generate_reference(model, tokenizer, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """``model.generate`` greedy: the new token ids, cut after the first end token."""
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0, len(prompt_ids) :].tolist()
    ends = [i for i, token in enumerate(new) if token == tokenizer.eos_token_id]
    return new[: ends[0] + 1] if ends else new


def float64_logprobs(model, ids: list[int]) -> torch.Tensor:
    """``(T, V)`` float64 next-token log-probabilities at every position of ``ids``."""
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        logits = reference(torch.tensor([ids])).logits[0]  # (T, V)
    return torch.log_softmax(logits, dim=-1)


def test_models_lists_the_served_model(serve):
    client, _ = serve
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_greedy_equals_model_generate(serve, lm):
    client, _ = serve
    model, tokenizer = lm
    for prompt in PROMPTS:
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
        expected = generate_reference(model, tokenizer, tokenizer(prompt)["input_ids"], 12)
        choice = out.choices[0]
        assert choice.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert out.usage.completion_tokens == len(expected) == 12
        assert out.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
        assert out.usage.total_tokens == out.usage.prompt_tokens + 12
        assert choice.finish_reason == "length"


def test_batched_greedy_equals_each_prompt_alone(serve):
    client, engine = serve
    alone = [
        client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0)
        for p in PROMPTS
    ]
    batches = engine.stats.batches
    together = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=10, temperature=0)
    assert engine.stats.batches == batches + 1  # the three prompts were one batch
    assert [c.index for c in together.choices] == [0, 1, 2]
    assert [c.text for c in together.choices] == [a.choices[0].text for a in alone]
    assert together.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    # The outputs differ from prompt to prompt: the comparison is not of one repeated token.
    assert len({c.text for c in together.choices}) == 3


def test_completion_logprobs_are_the_models_top_k(serve, lm):
    client, _ = serve
    model, tokenizer = lm
    names = TokenText(tokenizer)
    prompt = PROMPTS[1]
    out = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=5
    )
    logprobs = out.choices[0].logprobs
    prompt_ids = tokenizer(prompt)["input_ids"]
    generated = generate_reference(model, tokenizer, prompt_ids, 6)
    reference = float64_logprobs(model, prompt_ids + generated)
    assert logprobs.tokens == [names.text_of(t) for t in generated]
    for step, token in enumerate(generated):
        expected = reference[len(prompt_ids) - 1 + step]  # (V,) predicts token `step`
        top_values, top_ids = expected.topk(5)
        served = logprobs.top_logprobs[step]
        assert set(served) == {names.text_of(i) for i in top_ids.tolist()}
        for token_id, value in zip(top_ids.tolist(), top_values.tolist(), strict=True):
            assert served[names.text_of(token_id)] == pytest.approx(value, abs=1e-4)
        assert logprobs.token_logprobs[step] == pytest.approx(expected[token].item(), abs=1e-4)
    # Offsets count from the prompt's start and follow the text.
    assert logprobs.text_offset[0] == len(prompt)
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert logprobs.text_offset[-1] < len(prompt) + len(out.choices[0].text)


def test_chat_uses_the_template_and_reports_chat_logprobs(chat_lm):
    model, tokenizer = chat_lm
    names = TokenText(tokenizer)
    engine = Engine(model, tokenizer)
    engine.start()
    with running(engine) as url:
        from openai import OpenAI

        client = OpenAI(base_url=url, api_key="unused", max_retries=0)
        out = client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=6,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
        )
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert out.usage.prompt_tokens == len(prompt_ids)
    generated = generate_reference(model, tokenizer, prompt_ids, 6)
    assert out.choices[0].message.content == tokenizer.decode(generated, skip_special_tokens=True)
    reference = float64_logprobs(model, prompt_ids + generated)
    content = out.choices[0].logprobs.content
    assert [entry.token for entry in content] == [names.text_of(t) for t in generated]
    for step, entry in enumerate(content):
        expected = reference[len(prompt_ids) - 1 + step]
        top_values, top_ids = expected.topk(3)
        assert [t.token for t in entry.top_logprobs] == [names.text_of(i) for i in top_ids.tolist()]
        served = [t.logprob for t in entry.top_logprobs]
        assert served == pytest.approx(top_values.tolist(), abs=1e-4)
        assert entry.logprob == pytest.approx(expected[generated[step]].item(), abs=1e-4)
    # The tokens' raw bytes make up the reply (partial characters included).
    raw = b"".join(bytes(entry.bytes) for entry in content)
    assert raw.decode("utf-8", errors="replace") == out.choices[0].message.content


def test_chat_stream_adds_up_to_the_whole_reply(serve):
    client, _ = serve
    whole = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # it really came in pieces
    assert "".join(pieces) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_stop_strings_cut_the_text_streamed_or_not(serve):
    client, _ = serve
    prompt = PROMPTS[0]
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    text = full.choices[0].text
    # A stop string that first occurs in the middle of the text, spanning two characters.
    cut = next(
        i
        for i in range(2, len(text) - 2)
        if text.find(text[i : i + 2]) == i and "\ufffd" not in text[i : i + 2]
    )
    stop = text[cut : cut + 2]
    stops = ["never in this text \x00", stop]
    out = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=stops
    )
    assert out.choices[0].text == text[:cut]
    assert out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=stops, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == text[:cut]
    assert chunks[-1].choices[0].finish_reason == "stop"
    single = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=stop
    )
    assert single.choices[0].text == text[:cut]


def test_seeded_sampling_repeats_and_n_gives_distinct_choices(serve):
    client, _ = serve
    kwargs = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 1.0}
    first = client.completions.create(n=3, seed=7, **kwargs)
    again = client.completions.create(n=3, seed=7, **kwargs)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in again.choices]
    assert len(set(texts)) == 3
    assert first.usage.completion_tokens == 24
    other = client.completions.create(n=3, seed=8, **kwargs)
    assert [c.text for c in other.choices] != texts


def test_a_tiny_top_p_keeps_only_the_best_token(serve):
    client, _ = serve
    kwargs = {"model": MODEL, "prompt": PROMPTS[2], "max_tokens": 8}
    greedy = client.completions.create(temperature=0, **kwargs).choices[0].text
    nucleus = client.completions.create(temperature=1.5, top_p=1e-6, seed=1, **kwargs)
    assert nucleus.choices[0].text == greedy


def test_an_end_token_finishes_the_row_with_stop(lm):
    model, tokenizer = lm
    prompt_ids = tokenizer(PROMPTS[0])["input_ids"]
    generated = generate_reference(model, tokenizer, prompt_ids, 6)
    engine = Engine(model, tokenizer)
    engine.end_ids = frozenset({generated[3]})  # the 4th greedy token now ends the text
    engine.start()
    with running(engine) as url:
        from openai import OpenAI

        client = OpenAI(base_url=url, api_key="unused", max_retries=0)
        out = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=6, temperature=0)
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == tokenizer.decode(generated[:3])
    assert out.usage.completion_tokens == 4  # the end token is generated, not shown


def test_without_a_chat_template_chat_is_plain_and_said_once(serve, caplog):
    client, _ = serve
    caplog.set_level(logging.INFO, logger="potstill")
    for _ in range(2):
        out = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0
        )
        assert out.choices[0].finish_reason == "length"
    said = [r for r in caplog.records if "no chat template" in r.getMessage()]
    assert len(said) == 1


def test_the_stream_is_server_sent_events_ending_in_done(serve):
    client, _ = serve
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 5, "temperature": 0}
    kind, raw = post_stream(f"{client.base_url}completions", {**body, "stream": True})
    assert kind.startswith("text/event-stream")
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: {") for event in events[:-2])
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1
    whole = client.completions.create(**body).choices[0].text
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
