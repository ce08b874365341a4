"""Distillation losses: pure functions of the student's outputs and a teacher signal.

`registry` is the one list of loss names (function, kind, parameters); `divergences` the
token-level losses (CE, forward/reverse KL, JSD, TVD, skew KL) on dense or sparse
teachers (`sparse`); `universal` ULD's sorted-distribution loss, for a student of another
tokenizer; `inside` the hidden-state and attention losses and their layer maps
(`layers`); `terms` weighs them into one scalar; `chunked` computes the token terms fused
with the student's output layer, a chunk of tokens at a time.
"""

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
from potstill.losses.inside import attention_kl, hidden_cosine, hidden_mse, hidden_projections
from potstill.losses.registry import (
    KD_LOSSES,
    LOSS_NAMES,
    REGISTRY,
    LossSpec,
    Param,
    cross_tokenizer_problem,
    loss_spec,
)
from potstill.losses.shared import shared_kl
from potstill.losses.sparse import top_k_signal
from potstill.losses.terms import (
    LossTerm,
    combine_losses,
    inside_losses,
    resolve_layers,
    signal_request,
)
from potstill.losses.universal import uld
from potstill.signals import DenseSignal, SparseSignal, TeacherSignal, as_signal

__all__ = [
    "IGNORE_INDEX",
    "KD_LOSSES",
    "LOSS_NAMES",
    "REGISTRY",
    "DenseSignal",
    "LossSpec",
    "LossTerm",
    "Param",
    "SparseSignal",
    "TeacherSignal",
    "as_signal",
    "attention_kl",
    "chunked_kd_loss",
    "combine_losses",
    "cross_entropy",
    "cross_tokenizer_problem",
    "forward_kl",
    "hidden_cosine",
    "hidden_mse",
    "hidden_projections",
    "inside_losses",
    "jsd",
    "loss_spec",
    "resolve_layers",
    "reverse_kl",
    "shared_kl",
    "signal_request",
    "skew_kl",
    "top_k_signal",
    "tvd",
    "uld",
]
