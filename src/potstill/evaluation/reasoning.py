"""Exact-match accuracy on problems with checkable answers: a model answers every
problem greedily (batched, with a KV cache), its final answer is extracted and checked
by the problem's own scorer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from potstill.data.chat import ChatRows
from potstill.data.problems import ProblemSet
from potstill.generation import Engine
from potstill.generation.chat import chat_text
from potstill.generation.handle import GenerationSettings
from potstill.synth.generate import messages_of
from potstill.tasks.causal_lm import score_models
from potstill.util.errors import PotstillError


@dataclass(frozen=True)
class Answer:
    """One model's reply to one problem, and how it checked."""

    problem: int
    text: str
    answer: str | None
    correct: bool
    tokens: int
    finish_reason: str | None

    @classmethod
    def of(
        cls,
        problems: ProblemSet,
        problem: int,
        text: str,
        tokens: int,
        finish_reason: str | None,
    ) -> Answer:
        """``text`` as the reply to problem ``problem``, checked."""
        check = problems.check(problem, text)
        return cls(problem, text, check.answer, check.correct, tokens, finish_reason)


@dataclass(frozen=True)
class Solved:
    """A model's answers to a problem set: exact-match accuracy and what they cost."""

    answers: list[Answer]
    seconds: float

    @property
    def accuracy(self) -> float:
        return sum(a.correct for a in self.answers) / len(self.answers)

    @property
    def answered(self) -> float:
        """Share of replies with an answer that could be read at all."""
        return sum(a.answer is not None for a in self.answers) / len(self.answers)

    @property
    def mean_tokens(self) -> float:
        return sum(a.tokens for a in self.answers) / len(self.answers)

    @property
    def truncated(self) -> float:
        """Share of replies cut off by the token limit."""
        return sum(a.finish_reason == "length" for a in self.answers) / len(self.answers)

    def to_rows(self) -> list[dict[str, Any]]:
        return [a.__dict__.copy() for a in self.answers]


def solve(
    model: Any,
    tokenizer: Any,
    problems: ProblemSet,
    *,
    system: str | None,
    max_tokens: int,
    batch_size: int,
) -> Solved:
    """Every problem answered greedily by ``model`` (in eval mode, on its device) through
    its chat template, then checked."""
    if max_tokens < 1 or batch_size < 1:
        raise ValueError("max_tokens and batch_size must be at least 1")
    if len(problems) == 0:
        raise PotstillError("no problems to answer")
    engine = Engine(model, tokenizer, max_batch=batch_size, max_queue=len(problems) + 1)
    prompts = []
    for problem in problems.problems:
        chat = chat_text(tokenizer, messages_of(problem.question, system))
        prompts.append(engine.encode(chat.text, add_special_tokens=chat.add_special_tokens))
    settings = GenerationSettings(max_tokens=max_tokens, sampling_temperature=0.0)
    started = time.perf_counter()
    with engine:
        choices = engine.generate(prompts, settings)
    seconds = time.perf_counter() - started
    answers = [
        Answer.of(problems, i, c.text, c.completion_tokens, c.finish_reason)
        for i, c in enumerate(choices)
    ]
    return Solved(answers, seconds)


def reply_kl(
    teacher: Any,
    model: Any,
    tokenizer: Any,
    problems: ProblemSet,
    solved: Solved,
    *,
    system: str | None,
    max_length: int,
    batch_size: int = 8,
) -> float:
    """Mean KL(teacher ‖ model) per token of ``model``'s own replies (``solved``), in nats:
    how far the model strays from the teacher on the text it writes itself, which is what
    on-policy distillation trains down. Teacher and model share ``tokenizer``; each reply
    is read back through the chat template after its question."""
    chats = [
        (messages_of(problems.problems[a.problem].question, system), a.text) for a in solved.answers
    ]
    rows = ChatRows.build(tokenizer, chats, max_length=max_length)
    batch = rows.batch(torch.arange(len(rows)))
    scores = score_models(
        {"teacher": teacher, "model": model},
        batch.input_ids,
        batch.labels,
        teacher="teacher",
        batch_size=batch_size,
    )
    kl = scores["model"].kl
    assert kl is not None
    return kl
