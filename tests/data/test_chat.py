"""Both views of a chat example: the student's (no context) and the teacher's (context
first) share their response tokens; batches label the response only."""

from __future__ import annotations

import pytest
import torch

from potstill.data.chat import ChatExamples, ChatRows, Context
from potstill.util.errors import PotstillError
from potstill.util.tokens import IGNORE_INDEX
from tests.conftest import make_tokenizer

CHAT = (
    "{% for m in messages %}<eos>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<eos>assistant\n{% endif %}"
)
EXAMPLES = [("To be?", "Or not to be."), ("Who is there?", "Nay, answer me.")]
CONTEXT = Context("Speak as the ghost.", shots=(("Hamlet?", "Remember me."),))


def chat_tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT
    return tokenizer


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_views_differ_by_the_context_and_share_the_response():
    tokenizer = chat_tokenizer()
    got = ChatExamples.build(tokenizer, EXAMPLES, CONTEXT)
    prompt, response = EXAMPLES[0]
    student_head = f"<eos>user\n{prompt}<eos>\n<eos>assistant\n"
    teacher_head = (
        "<eos>system\nSpeak as the ghost.<eos>\n<eos>user\nHamlet?<eos>\n"
        f"<eos>assistant\nRemember me.<eos>\n{student_head}"
    )
    tail = encode(tokenizer, f"{response}<eos>\n")
    assert got.student_ids[0] == encode(tokenizer, student_head) + tail
    assert got.teacher_ids[0] == encode(tokenizer, teacher_head) + tail
    assert got.student_prompt[0] == len(encode(tokenizer, student_head))
    assert got.teacher_prompt[0] == len(encode(tokenizer, teacher_head))
    assert got.context_tokens() > 0


def test_a_batch_labels_the_response_only_and_pads_right():
    got = ChatExamples.build(chat_tokenizer(), EXAMPLES, CONTEXT)
    batch = got.batch(torch.tensor([1, 0]))
    for row, i in enumerate([1, 0]):
        ids, prompt = got.student_ids[i], got.student_prompt[i]
        assert batch.input_ids[row, : len(ids)].tolist() == ids
        assert batch.attention_mask[row].sum() == len(ids)
        labels = batch.labels[row]
        assert (labels[:prompt] == IGNORE_INDEX).all() and (
            labels[len(ids) :] == IGNORE_INDEX
        ).all()
        assert labels[prompt : len(ids)].tolist() == ids[prompt:]
    assert batch.index.tolist() == [1, 0]


def test_responses_are_cut_to_max_length_in_both_views():
    full = ChatExamples.build(chat_tokenizer(), EXAMPLES, CONTEXT)
    limit = full.student_prompt[0] + 2
    cut = ChatExamples.build(chat_tokenizer(), EXAMPLES[:1], CONTEXT, max_length=limit)
    assert len(cut.student_ids[0]) == limit
    assert cut.teacher_ids[0] == full.teacher_ids[0][: cut.teacher_prompt[0] + 2]
    with pytest.raises(PotstillError, match="its prompt alone takes"):
        ChatExamples.build(chat_tokenizer(), EXAMPLES[:1], CONTEXT, max_length=3)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Context(" "), "context is empty"),
        (lambda: ChatExamples.build(make_tokenizer(), EXAMPLES, CONTEXT), "no chat template"),
        (lambda: ChatExamples.build(chat_tokenizer(), [], CONTEXT), "no examples"),
    ],
    ids=["empty-context", "no-template", "no-examples"],
)
def test_bad_input_is_refused(build, message):
    with pytest.raises(PotstillError, match=message):
        build()


def test_chat_rows_label_the_reply_only_and_cut_it_to_max_length():
    tokenizer = chat_tokenizer()
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "To be?"}]
    rows = ChatRows.build(tokenizer, [(turns, "Or not to be.")])
    head = encode(
        tokenizer, "<eos>system\nBe brief.<eos>\n<eos>user\nTo be?<eos>\n<eos>assistant\n"
    )
    assert rows.prompt == [len(head)] and rows.ids[0][: len(head)] == head
    assert rows.response_tokens() == len(rows.ids[0]) - len(head)
    batch = rows.batch(torch.tensor([0]))
    labels = batch.labels[0].tolist()
    assert (
        labels[: len(head)] == [IGNORE_INDEX] * len(head)
        and labels[len(head) :] == rows.ids[0][len(head) :]
    )
    cut = ChatRows.build(tokenizer, [(turns, "Or not to be.")], max_length=len(head) + 2)
    assert cut.ids[0] == rows.ids[0][: len(head) + 2]
    with pytest.raises(PotstillError, match=r"^chat 1: its prompt alone takes"):
        ChatRows.build(tokenizer, [(turns, "Or not to be.")], max_length=len(head))
    with pytest.raises(PotstillError, match="no chats"):
        ChatRows.build(tokenizer, [])
