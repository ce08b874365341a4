"""Teacher signals: the one set of types every teacher source produces and every loss reads.

Token distributions are dense logits or sparse top-k ``(ids, logprobs)`` plus the mass left
outside (`distributions`); `TeacherOutputs` bundles them with optional hidden states and
attention maps, asked for by a `SignalRequest` (`outputs`). No torch model code here.
"""

from potstill.signals.distributions import DenseSignal, SparseSignal, TeacherSignal, as_signal
from potstill.signals.outputs import NOTHING, SignalRequest, TeacherOutputs

__all__ = [
    "NOTHING",
    "DenseSignal",
    "SignalRequest",
    "SparseSignal",
    "TeacherOutputs",
    "TeacherSignal",
    "as_signal",
]
