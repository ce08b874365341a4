"""The one list of loss names: each name's function, kind, and parameters.

The recipe schema validates loss terms against this registry, the training step picks
each term's function from it, and a new loss (hidden states, attention maps) becomes one
more entry. ``kind`` says what a term compares: ``"tokens"`` (next-token distributions,
computed inside the fused output-layer chunks), ``"hidden"`` (hidden states through a
layer map, `inside`) and ``"attention"`` (attention maps through a layer map).
``any_tokenizer`` says whether a term can train a student of another tokenizer than the
teacher's: cross-entropy (the student's own tokens), ``uld`` (sorted distributions,
`universal`) and ``shared_kl`` (the tokens both vocabularies hold, `shared`); every other
term compares token ids or positions one to one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from potstill.losses.divergences import cross_entropy, forward_kl, jsd, reverse_kl, skew_kl, tvd
from potstill.losses.inside import attention_kl, hidden_cosine, hidden_mse
from potstill.losses.shared import shared_kl
from potstill.losses.universal import uld

Kind = Literal["tokens", "hidden", "attention"]


@dataclass(frozen=True)
class Param:
    """A loss parameter's default and its open interval ``(low, high)``.

    At the ends of the interval the losses that take one are identically zero (jsd's
    mixture weight, skew_kl's skew), so the ends are refused unless ``low_closed``.
    """

    default: float
    low: float
    high: float
    low_closed: bool = False

    def check(self, name: str, value: float) -> None:
        above = value >= self.low if self.low_closed else value > self.low
        if not (above and value < self.high):
            left = "[" if self.low_closed else "("
            raise ValueError(f"{name} = {value:g} must be in {left}{self.low:g}, {self.high:g})")


@dataclass(frozen=True)
class LossSpec:
    """One loss: what it compares, whether it needs a teacher, which knobs it takes."""

    name: str
    kind: Kind
    fn: Callable[..., torch.Tensor]
    needs_teacher: bool
    tempered: bool  # takes a temperature (T² scaling); cross_entropy does not
    params: Mapping[str, Param] = field(default_factory=dict)
    any_tokenizer: bool = False  # needs no shared vocabulary or positions with the teacher


REGISTRY: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "cross_entropy",
            "tokens",
            cross_entropy,
            needs_teacher=False,
            tempered=False,
            any_tokenizer=True,
        ),
        LossSpec("forward_kl", "tokens", forward_kl, needs_teacher=True, tempered=True),
        LossSpec("reverse_kl", "tokens", reverse_kl, needs_teacher=True, tempered=True),
        LossSpec(
            "jsd",
            "tokens",
            jsd,
            needs_teacher=True,
            tempered=True,
            params={"beta": Param(0.5, 0, 1)},
        ),
        LossSpec("tvd", "tokens", tvd, needs_teacher=True, tempered=True),
        LossSpec(
            "skew_kl",
            "tokens",
            skew_kl,
            needs_teacher=True,
            tempered=True,
            params={"alpha": Param(0.1, 0, 1, low_closed=True)},
        ),
        LossSpec("uld", "tokens", uld, needs_teacher=True, tempered=False, any_tokenizer=True),
        LossSpec(
            "shared_kl", "tokens", shared_kl, needs_teacher=True, tempered=False, any_tokenizer=True
        ),
        LossSpec("hidden_mse", "hidden", hidden_mse, needs_teacher=True, tempered=False),
        LossSpec("hidden_cosine", "hidden", hidden_cosine, needs_teacher=True, tempered=False),
        LossSpec("attention_kl", "attention", attention_kl, needs_teacher=True, tempered=False),
    )
}
LOSS_NAMES: tuple[str, ...] = tuple(REGISTRY)
# The token losses that compare with a teacher distribution, by name.
KD_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    name: spec.fn for name, spec in REGISTRY.items() if spec.needs_teacher and spec.kind == "tokens"
}


def cross_tokenizer_problem(names: list[str]) -> str | None:
    """Why the loss terms ``names`` cannot train a student of another tokenizer than the
    teacher's, or None when they can.

    >>> cross_tokenizer_problem(["uld", "cross_entropy"]) is None
    True
    >>> cross_tokenizer_problem(["forward_kl", "cross_entropy"])
    'loss terms forward_kl compare token ids or positions one to one'
    """
    needs_ids = sorted({n for n in names if not loss_spec(n).any_tokenizer})
    if not needs_ids:
        return None
    return f"loss terms {', '.join(needs_ids)} compare token ids or positions one to one"


def loss_spec(name: str) -> LossSpec:
    """The registry entry for ``name``; an unknown name is a ValueError with a suggestion.

    >>> loss_spec("jsd").params["beta"].default
    0.5
    """
    spec = REGISTRY.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, LOSS_NAMES, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known losses: {', '.join(LOSS_NAMES)}"
        raise ValueError(f"unknown loss {name!r}; {hint}")
    return spec
