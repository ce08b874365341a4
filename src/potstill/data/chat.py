"""Prompt/response examples seen two ways: as the student reads them (a chat with no
context) and as the teacher reads them (the same chat after a context: a system prompt
and/or few-shot turns). Context distillation trains the first to match the second.

Both views end in the same response tokens; only the part before differs. Examples are
kept one per row (right-padded, never packed), so each row's teacher view is whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from potstill.data.batch import Batch
from potstill.util.errors import PotstillError
from potstill.util.tokens import IGNORE_INDEX


@dataclass(frozen=True)
class Context:
    """What only the teacher reads: a system prompt and/or few-shot (prompt, response) turns.

    >>> Context("Answer in French.").messages()[0]["role"]
    'system'
    """

    system: str | None = None
    shots: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not (self.system and self.system.strip()) and not self.shots:
            raise PotstillError("the context is empty: give a system prompt or few-shot turns")

    def messages(self) -> list[dict[str, str]]:
        """The context as chat messages, before the example's own turns."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        for prompt, response in self.shots:
            out += [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": response},
            ]
        return out


@dataclass
class ChatExamples:
    """Examples as token ids for the student (no context) and the teacher (context first).

    ``student_ids[i]`` / ``teacher_ids[i]`` are example ``i``'s tokens; their first
    ``student_prompt[i]`` / ``teacher_prompt[i]`` tokens are the prompt (the chat up to the
    assistant's header), the rest the same response tokens in both. Responses are cut so
    the student's view fits ``max_length`` tokens.
    """

    student_ids: list[list[int]]
    student_prompt: list[int]
    teacher_ids: list[list[int]]
    teacher_prompt: list[int]
    pad_id: int = 0

    @classmethod
    def build(
        cls,
        tokenizer: Any,
        examples: Sequence[tuple[str, str]],
        context: Context,
        *,
        max_length: int = 256,
    ) -> ChatExamples:
        """Render each (prompt, response) through the tokenizer's chat template twice."""
        if not getattr(tokenizer, "chat_template", None):
            raise PotstillError(
                "context distillation needs a chat model: the tokenizer has no chat template"
            )
        if not examples:
            raise PotstillError("no examples: give prompt/response rows to distil the context on")
        out = cls([], [], [], [], pad_id=_pad_id(tokenizer))
        for i, (prompt, response) in enumerate(examples):
            s_head, s_resp = _render(tokenizer, [], prompt, response)
            t_head, t_resp = _render(tokenizer, context.messages(), prompt, response)
            if s_resp != t_resp:
                raise PotstillError(
                    f"example {i + 1}: the chat template renders the response differently "
                    "after the context; context distillation needs the same response tokens"
                )
            resp = _fitted(s_head, s_resp, max_length, f"example {i + 1}")
            out.student_ids.append(s_head + resp)
            out.student_prompt.append(len(s_head))
            out.teacher_ids.append(t_head + resp)
            out.teacher_prompt.append(len(t_head))
        return out

    def __len__(self) -> int:
        return len(self.student_ids)

    def batch(self, index: torch.Tensor) -> Batch:
        """The student's view of examples ``index``, right-padded; labels only on responses."""
        return padded_chats(
            [self.student_ids[i] for i in index.tolist()],
            [self.student_prompt[i] for i in index.tolist()],
            index,
            self.pad_id,
        )

    def teacher_batch(self, index: torch.Tensor) -> Batch:
        """The teacher's view of the same examples, right-padded the same way."""
        return padded_chats(
            [self.teacher_ids[i] for i in index.tolist()],
            [self.teacher_prompt[i] for i in index.tolist()],
            index,
            self.pad_id,
        )

    def context_tokens(self) -> float:
        """Mean prompt tokens the teacher's view has beyond the student's, per example."""
        extra = [t - s for t, s in zip(self.teacher_prompt, self.student_prompt, strict=True)]
        return sum(extra) / len(extra)


@dataclass
class ChatRows:
    """Chats as one view for training on their responses: ``ids[i]`` is chat ``i`` through
    the end of its assistant turn, its first ``prompt[i]`` tokens the prompt (labels -100).

    Build with `ChatRows.build`; batches are right-padded, one chat per row.
    """

    ids: list[list[int]]
    prompt: list[int]
    pad_id: int = 0

    @classmethod
    def build(
        cls,
        tokenizer: Any,
        chats: Sequence[tuple[list[dict[str, str]], str]],
        *,
        max_length: int = 256,
    ) -> ChatRows:
        """Render each (turns, response) through the chat template; a response is cut so the
        chat fits ``max_length`` tokens, and a prompt that alone does not fit is refused."""
        if not getattr(tokenizer, "chat_template", None):
            raise PotstillError(
                "training on chats needs a chat model: the tokenizer has no template"
            )
        if not chats:
            raise PotstillError("no chats to train on")
        out = cls([], [], pad_id=_pad_id(tokenizer))
        for i, (turns, response) in enumerate(chats):
            head, resp = render_chat(
                tokenizer, turns, response, fix="its responses cannot be told from its prompts"
            )
            out.ids.append(head + _fitted(head, resp, max_length, f"chat {i + 1}"))
            out.prompt.append(len(head))
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: torch.Tensor) -> Batch:
        """Chats ``index``, right-padded; labels only on the responses."""
        rows = index.tolist()
        return padded_chats(
            [self.ids[i] for i in rows], [self.prompt[i] for i in rows], index, self.pad_id
        )

    def response_tokens(self) -> int:
        return sum(len(ids) - prompt for ids, prompt in zip(self.ids, self.prompt, strict=True))


def render_chat(
    tokenizer: Any, turns: list[dict[str, str]], response: str, *, fix: str
) -> tuple[list[int], list[int]]:
    """``turns`` then ``response`` as the assistant's turn, through the chat template:
    (the ids up to and including the assistant header, the response ids through the end of
    turn). ``fix`` ends the error when the template renders the prompt differently with
    and without its answer (so the two cannot be split)."""
    head = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(
        [*turns, {"role": "assistant", "content": response}], tokenize=False
    )
    if not whole.startswith(head):
        raise PotstillError(
            "the tokenizer's chat template renders a prompt differently with and without "
            f"its answer; {fix}"
        )
    return (
        list(tokenizer(head, add_special_tokens=False)["input_ids"]),
        list(tokenizer(whole[len(head) :], add_special_tokens=False)["input_ids"]),
    )


def _render(
    tokenizer: Any, context: list[dict[str, str]], prompt: str, response: str
) -> tuple[list[int], list[int]]:
    """(prompt ids up to the assistant header, response ids through the end of turn)."""
    turns = [*context, {"role": "user", "content": prompt}]
    return render_chat(
        tokenizer, turns, response, fix="context distillation cannot align the two views"
    )


def _fitted(head: list[int], response: list[int], max_length: int, what: str) -> list[int]:
    """``response`` cut so that ``head + response`` fits ``max_length`` tokens; a prompt
    (``head``) that alone does not fit is refused, naming ``what`` it is."""
    if len(head) >= max_length:
        raise PotstillError(
            f"{what}: its prompt alone takes {len(head)} tokens, more than "
            f"max_length {max_length}; shorten it or raise max_length"
        )
    return response[: max_length - len(head)]


def padded_chats(
    rows: list[list[int]],
    prompts: list[int],
    index: torch.Tensor,
    pad: int,
    *,
    sampled: bool = False,
) -> Batch:
    """Chats ``rows`` (token ids) right-padded into a `Batch`, labels only past each row's
    first ``prompts[i]`` tokens."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, L)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)  # (B, L)
    for r, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        ids[r, : len(row)] = torch.tensor(row)
        labels[r, prompt : len(row)] = torch.tensor(row[prompt:])
        mask[r, : len(row)] = True
    return Batch(ids, mask, labels, index.clone(), sampled)


def _pad_id(tokenizer: Any) -> int:
    for token in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    return 0
