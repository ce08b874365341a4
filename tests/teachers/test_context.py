"""A context teacher's logits, moved to the student's positions, equal the teacher's own
logits on each example's whole teacher view, run alone and unpadded."""

from __future__ import annotations

import pytest
import torch

from potstill.data.chat import ChatExamples
from potstill.signals import NOTHING, SignalRequest
from potstill.teachers.context import ContextTeacher
from potstill.util.errors import PotstillError
from tests.conftest import make_llama
from tests.data.test_chat import CONTEXT, EXAMPLES, chat_tokenizer


@pytest.fixture(scope="module")
def setup():
    tokenizer = chat_tokenizer()
    model = make_llama(len(tokenizer), layers=2, seed=1).eval()
    return model, ChatExamples.build(tokenizer, EXAMPLES, CONTEXT)


def test_logits_land_on_the_student_positions_of_the_response(setup):
    model, examples = setup
    teacher = ContextTeacher(model, examples)
    index = torch.tensor([1, 0])
    batch = examples.batch(index)
    logits = teacher.outputs(batch, SignalRequest(distributions=True)).distributions.logits
    assert logits.shape == (2, batch.input_ids.shape[1] - 1, model.config.vocab_size)
    for row, i in enumerate(index.tolist()):
        with torch.no_grad():  # the reference: the teacher view alone, no padding
            alone = model(input_ids=torch.tensor([examples.teacher_ids[i]])).logits[0]
        s, t = examples.student_prompt[i], examples.teacher_prompt[i]
        n = len(examples.student_ids[i]) - s
        torch.testing.assert_close(logits[row, s - 1 : s - 1 + n], alone[t - 1 : t - 1 + n])
        # Position s-1+k predicts the response's k-th token in both views.
        assert examples.student_ids[i][s:] == examples.teacher_ids[i][t:]
        assert (logits[row, : s - 1] == 0).all() and (logits[row, s - 1 + n :] == 0).all()


def test_only_distributions_are_given(setup):
    model, examples = setup
    teacher = ContextTeacher(model, examples)
    batch = examples.batch(torch.tensor([0]))
    assert teacher.outputs(batch, NOTHING).distributions is None
    with pytest.raises(PotstillError, match="token distributions only"):
        teacher.outputs(batch, SignalRequest(distributions=True, hidden_layers=(1,)))
