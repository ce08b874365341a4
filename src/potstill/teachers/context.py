"""A teacher that reads a context the student never sees, example by example.

`LiveTeacher(prefix_ids=…)` covers a context that is one fixed prefix of every input; a
chat context sits inside each chat (after the template's own opening, before the user's
turn), so here every example has its own teacher view (`potstill.data.chat.ChatExamples`)
and the teacher's next-token logits on the response are moved to the student's positions.
"""

from __future__ import annotations

import torch

from potstill.data.batch import Batch
from potstill.data.chat import ChatExamples
from potstill.signals import DenseSignal, SignalRequest, TeacherOutputs
from potstill.util.errors import PotstillError


class ContextTeacher:
    """``model`` run on each example's teacher view; logits aligned to the student's view.

    Args:
        model: a causal LM (``model(input_ids=…, attention_mask=…).logits`` is ``(B, L, V)``).
        examples: both views of every example; batches are looked up by their ``index``.
    """

    def __init__(self, model: torch.nn.Module, examples: ChatExamples) -> None:
        self.model = model
        self.examples = examples

    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def outputs(self, batch: Batch, request: SignalRequest) -> TeacherOutputs:
        """The teacher's next-token logits ``(B, L − 1, V)`` at the student's positions.

        Student position ``t`` predicts student token ``t + 1``; on the response that is
        teacher position ``t − student_prompt + teacher_prompt``. Prompt and padding
        positions hold zeros (their labels are -100, so no loss reads them).
        """
        if request.empty:
            return TeacherOutputs()
        if request.hidden_layers or request.attention_layers:
            raise PotstillError(
                "a context teacher gives token distributions only; drop the hidden-state "
                "and attention loss terms"
            )
        view = self.examples.teacher_batch(batch.index)
        device = self.device
        with torch.no_grad():
            logits = self.model(
                input_ids=view.input_ids.to(device), attention_mask=view.attention_mask.to(device)
            ).logits  # (B, Lt, V)
        b, length = batch.input_ids.shape
        out = torch.zeros(b, length - 1, logits.shape[-1], dtype=logits.dtype, device=device)
        for r, i in enumerate(batch.index.tolist()):
            s_prompt = self.examples.student_prompt[i]
            t_prompt = self.examples.teacher_prompt[i]
            n = len(self.examples.student_ids[i]) - s_prompt  # response tokens
            # Student positions s_prompt-1 .. s_prompt+n-2 predict the response tokens.
            out[r, s_prompt - 1 : s_prompt - 1 + n] = logits[r, t_prompt - 1 : t_prompt - 1 + n]
        return TeacherOutputs(distributions=DenseSignal(out))
