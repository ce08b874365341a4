"""`reply_kl`: the teacher's KL to a model on the model's own replies, against a float64
reference computed on the same chats."""

from __future__ import annotations

import torch

from potstill.data.problems import ProblemSet
from potstill.evaluation.reasoning import Answer, Solved, reply_kl
from potstill.synth.generate import messages_of
from tests.conftest import make_llama
from tests.data.test_chat import chat_tokenizer

SYSTEM = "Add them up."


def test_reply_kl_is_the_mean_kl_per_reply_token():
    tokenizer = chat_tokenizer()
    teacher = make_llama(len(tokenizer), layers=2, seed=1).double()
    model = make_llama(len(tokenizer), layers=2, seed=2).double()
    problems = ProblemSet.generate("chain_sum", size=3, seed=0, options={"max_terms": 2})
    texts = ["To be, or not", "the question", "Whether 'tis nobler in the mind"]
    solved = Solved([Answer(i, t, None, False, 0, "stop") for i, t in enumerate(texts)], 1.0)
    got = reply_kl(
        teacher, model, tokenizer, problems, solved, system=SYSTEM, max_length=128, batch_size=2
    )

    total, count = 0.0, 0
    for problem, text in zip(problems.problems, texts, strict=True):
        turns = messages_of(problem.question, SYSTEM)
        head = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(
            [*turns, {"role": "assistant", "content": text}], tokenize=False
        )
        prompt = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(whole, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            p = torch.log_softmax(teacher(input_ids=ids).logits[0], -1)[prompt - 1 : -1]
            q = torch.log_softmax(model(input_ids=ids).logits[0], -1)[prompt - 1 : -1]
        total += float((p.exp() * (p - q)).sum())
        count += p.shape[0]
    assert abs(got - total / count) < 1e-5
    assert got > 0
    assert (
        reply_kl(teacher, teacher, tokenizer, problems, solved, system=SYSTEM, max_length=128)
        < 1e-9
    )
