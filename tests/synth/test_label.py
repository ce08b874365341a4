"""Label scoring on a tiny Llama: the prefix-cache path against the naive path, and the
naive path against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import normalizers

from potstill.synth.label import (
    Example,
    Label,
    LabelSpec,
    apply_calibration,
    build_prompt,
    calibrate,
    score_labels,
    score_labels_naive,
)
from potstill.util.errors import PotstillError
from tests.conftest import make_llama, make_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<eos>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<eos>assistant\n{% endif %}"
)
# "sport" is a prefix of "sports"; the third label is many tokens long.
SPEC = LabelSpec(
    [Label("sport", "games people play"), Label("sports"), Label("the question of life")],
    instruction="Which is it about?",
    examples=[Example("To be, or not to be", "the question of life"), Example("arms", "sport")],
)
TEXTS = [
    "To sleep",
    "Whether 'tis nobler in the mind to suffer the slings and arrows",
    "ay",
    "The heart-ache and the thousand natural shocks that flesh is heir to",
    "No more; and by a sleep to say we end",
]


@pytest.fixture(scope="module")
def model():
    model = make_llama(len(make_tokenizer()), layers=2, seed=0)
    # The tiny tokenizer spends ~200 tokens on the prompt; RoPE has no hard limit, so the
    # context is widened to keep every text whole (truncation has its own tests).
    model.config.max_position_embeddings = 512
    return model


def tokenizer(template: str | None):
    tok = make_tokenizer()
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, None], ids=["chat", "plain"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_prefix_cache_path_equals_naive_path(model, template, batch_size, one_thread):
    prompt = build_prompt(tokenizer(template), SPEC)
    assert len({len(ids) for ids in prompt.label_ids}) == 3
    fast = score_labels(model, prompt, TEXTS, batch_size=batch_size)
    naive = score_labels_naive(model, prompt, TEXTS)
    assert fast.logprobs.shape == (len(TEXTS), 3) and fast.logprobs.dtype == np.float64
    np.testing.assert_allclose(fast.logprobs, naive.logprobs, atol=1e-4, rtol=0)
    assert fast.truncated == naive.truncated == 0


def test_naive_path_equals_a_hand_computation(model, one_thread):
    prompt = build_prompt(tokenizer(CHAT_TEMPLATE), SPEC)
    text, j = TEXTS[1], 2
    seq = prompt.prefix_ids + prompt.text_ids(text) + prompt.label_ids[j]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0].double()  # (S, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(seq) - len(prompt.label_ids[j])
    expected = sum(logprobs[t - 1, seq[t]].item() for t in range(start, len(seq)))
    got = score_labels_naive(model, prompt, [text])
    assert got.truncated == 0
    got = got.logprobs[0, j]
    assert got == pytest.approx(expected, abs=1e-4)


def test_soft_labels_are_distributions_and_argmax_is_their_mode(model, one_thread):
    scores = score_labels(model, build_prompt(tokenizer(CHAT_TEMPLATE), SPEC), TEXTS)
    probs = scores.softmax()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert (probs >= 0).all()
    np.testing.assert_array_equal(scores.argmax(), probs.argmax(axis=1))
    assert scores.label_names == ["sport", "sports", "the question of life"]


def test_labels_end_with_the_end_of_turn_token():
    prompt = build_prompt(tokenizer(CHAT_TEMPLATE), SPEC)
    sport, sports = prompt.label_ids[0], prompt.label_ids[1]
    assert sport[-1] == sports[-1] == prompt.tokenizer.eos_token_id
    assert sports[: len(sport) - 1] == sport[:-1] and sport != sports[: len(sport)]


def test_long_texts_are_cut_and_counted_the_prefix_and_labels_kept(model, one_thread):
    prompt = build_prompt(tokenizer(CHAT_TEMPLATE), SPEC)
    fixed = len(prompt.prefix_ids) + len(prompt.tail_ids) + max(map(len, prompt.label_ids))
    max_length = fixed + 6
    ids, cut = prompt.fit(TEXTS[1], max_length)
    assert cut and len(ids) == 6 + len(prompt.tail_ids)
    assert ids[:6] == prompt.body_ids(TEXTS[1])[:6] and ids[6:] == prompt.tail_ids
    assert prompt.fit(TEXTS[2], max_length) == (prompt.text_ids(TEXTS[2]), False)
    fast = score_labels(model, prompt, TEXTS, batch_size=2, max_length=max_length)
    naive = score_labels_naive(model, prompt, TEXTS, max_length=max_length)
    long = sum(len(prompt.body_ids(t)) > 6 for t in TEXTS)
    assert fast.truncated == naive.truncated == long == 3
    np.testing.assert_allclose(fast.logprobs, naive.logprobs, atol=1e-4, rtol=0)


def test_the_models_context_limits_texts_by_default(one_thread):
    prompt = build_prompt(tokenizer(CHAT_TEMPLATE), SPEC)
    small = make_llama(len(prompt.tokenizer), layers=1, seed=1)
    fixed = len(prompt.prefix_ids) + len(prompt.tail_ids) + max(map(len, prompt.label_ids))
    small.config.max_position_embeddings = fixed + 4
    assert score_labels(small, prompt, TEXTS[:2]).truncated == 1
    small.config.max_position_embeddings = fixed
    with pytest.raises(PotstillError, match="shorten the instruction"):
        score_labels(small, prompt, TEXTS[:2])


def test_without_a_chat_template_a_plain_prompt_is_used():
    plain = build_prompt(tokenizer(None), SPEC)
    chat = build_prompt(tokenizer(CHAT_TEMPLATE), SPEC)
    assert plain.plain and not chat.plain
    decode = plain.tokenizer.decode
    assert decode(plain.prefix_ids).endswith("Answer: sport\n\nText:")
    assert "- sport: games people play" in decode(plain.prefix_ids)
    assert decode(plain.tail_ids) == "\nAnswer:"
    assert decode(plain.label_ids[0]) == " sport<eos>"
    assert decode(chat.tail_ids) == "<eos>\n<eos>assistant\n"


@pytest.mark.parametrize(
    ("labels", "examples", "message"),
    [
        (["only"], [], "at least two"),
        (["a", "b", "a"], [], "more than once"),
        (["a", " "], [], "empty label"),
        (["a", "b"], [("text", "c")], "not one of"),
    ],
)
def test_bad_label_sets_are_refused(labels, examples, message):
    with pytest.raises(PotstillError, match=message):
        LabelSpec(labels, examples=examples)


def test_labels_with_the_same_tokens_are_refused():
    tok = tokenizer(CHAT_TEMPLATE)
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    with pytest.raises(PotstillError, match="same tokens"):
        build_prompt(tok, LabelSpec(["Yes", "yes"]))


def test_empty_texts_are_refused(model):
    prompt = build_prompt(tokenizer(CHAT_TEMPLATE), SPEC)
    with pytest.raises(PotstillError, match="text 1 is empty"):
        score_labels(model, prompt, ["a", "  "])


def test_calibration_divides_out_the_prior(model, one_thread):
    prompt = build_prompt(tokenizer(CHAT_TEMPLATE), SPEC)
    scores = score_labels(model, prompt, TEXTS)
    uniform = np.full(3, 1 / 3)
    calibrated = np.exp(apply_calibration(scores.logprobs, uniform))
    np.testing.assert_allclose(calibrated, scores.softmax())
    prior = np.array([0.5, 0.3, 0.2])
    expected = scores.softmax() / prior
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.exp(apply_calibration(scores.logprobs, prior)), expected)

    measured = calibrate(model, prompt, ("N/A", "[MASK]"))
    reference = score_labels_naive(model, prompt, ["N/A", "[MASK]"]).softmax().mean(axis=0)
    assert measured.shape == (3,) and measured.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(measured, reference, atol=1e-5)
    assert calibrate(model, prompt).shape == (3,)  # "" is a content-free input too


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, None], ids=["chat", "plain"])
def test_an_answer_is_what_the_teacher_is_scored_on_and_the_name_what_is_kept(template):
    renamed = LabelSpec(
        [Label("rec.sport", "games people play", answer="sport"), Label("sports")],
        instruction="Which is it about?",
        examples=[Example("arms", "rec.sport")],
    )
    plain = LabelSpec([Label("sport", "games people play"), Label("sports")], "Which is it about?")
    plain.examples = [Example("arms", "sport")]
    got, expected = (
        build_prompt(tokenizer(template), renamed),
        build_prompt(tokenizer(template), plain),
    )
    # The same prompt and label tokens as naming the label "sport"; only the names differ.
    assert (got.prefix_ids, got.tail_ids, got.label_ids) == (
        expected.prefix_ids,
        expected.tail_ids,
        expected.label_ids,
    )
    assert got.label_names == ["rec.sport", "sports"]
    assert "rec.sport" not in got.tokenizer.decode(got.prefix_ids)


def test_answers_with_the_same_tokens_or_empty_are_refused():
    with pytest.raises(PotstillError, match="'a' and 'b' have the same tokens"):
        build_prompt(
            tokenizer(CHAT_TEMPLATE), LabelSpec([Label("a", answer="x"), Label("b", answer="x")])
        )
    with pytest.raises(PotstillError, match="empty answer"):
        LabelSpec([Label("a", answer=" "), Label("b")])
