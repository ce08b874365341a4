import pytest
import torch

from potstill.data.examples import ClassExamples
from potstill.losses import LossTerm, combine_losses
from potstill.signals import NOTHING, DenseSignal, SignalRequest
from potstill.teachers.labels import SoftLabels
from tests.conftest import make_tokenizer


def _examples(probs):
    texts = [f"To be {i}" for i in range(len(probs))]
    return ClassExamples(make_tokenizer(), texts, probs.argmax(-1), soft_labels=probs)


def test_soft_labels_are_a_one_position_signal():
    probs = torch.softmax(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), -1)
    examples = _examples(probs)
    teacher = SoftLabels.from_probs(examples.soft_labels)
    batch = examples.batch(torch.tensor([4, 0]))

    signal = teacher.outputs(batch, SignalRequest()).distributions
    assert isinstance(signal, DenseSignal)
    assert signal.logits.shape == (2, 1, 3) and signal.logits.dtype == torch.float32
    torch.testing.assert_close(signal.logits.exp()[:, 0], probs[[4, 0]])
    assert teacher.outputs(batch, NOTHING).distributions is None


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_is_zero_when_the_student_matches_the_teacher(temperature):
    probs = torch.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), -1)
    examples = _examples(probs)
    teacher = SoftLabels.from_probs(probs)
    batch = examples.batch(torch.arange(4))
    signal = teacher.outputs(batch, SignalRequest()).distributions
    student_logits = probs.log()[:, None, :] + 3.0  # same distribution, shifted logits
    term = LossTerm("forward_kl", 1.0, temperature)
    total, _ = combine_losses([term], student_logits, batch.targets[:, None], signal)
    assert abs(float(total)) < 1e-6
    other = torch.zeros_like(student_logits)
    assert float(combine_losses([term], other, batch.targets[:, None], signal)[0]) > 1e-3


def test_hidden_state_requests_are_refused():
    teacher = SoftLabels.from_probs(torch.full((2, 2), 0.5))
    batch = _examples(torch.full((2, 2), 0.5)).batch(torch.arange(2))
    with pytest.raises(ValueError, match="live teacher"):
        teacher.outputs(batch, SignalRequest(hidden_layers=(1,)))
