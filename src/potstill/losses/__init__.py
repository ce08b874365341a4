"""Distillation losses: pure functions of student logits and a teacher signal."""

from potstill.losses.chunked import chunked_kd_loss
from potstill.losses.divergences import (
    IGNORE_INDEX,
    cross_entropy,
    forward_kl,
    jsd,
    reverse_kl,
    skew_kl,
    tvd,
)
from potstill.signals.distributions import DenseSignal, SparseSignal, TeacherSignal, as_signal
from potstill.losses.sparse import top_k_signal
from potstill.losses.terms import KD_LOSSES, combine_losses

__all__ = [
    "IGNORE_INDEX",
    "KD_LOSSES",
    "DenseSignal",
    "SparseSignal",
    "TeacherSignal",
    "as_signal",
    "chunked_kd_loss",
    "combine_losses",
    "cross_entropy",
    "forward_kl",
    "jsd",
    "reverse_kl",
    "skew_kl",
    "top_k_signal",
    "tvd",
]
