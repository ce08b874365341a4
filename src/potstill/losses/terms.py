"""Loss terms (a registered loss with its weight, temperature and parameters), and their
weighted combination into one scalar with each term's own value for logging."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import torch

from potstill.losses.divergences import IGNORE_INDEX
from potstill.losses.inside import HeadMapping
from potstill.losses.layers import auto_layer_map, check_layer_map
from potstill.losses.registry import REGISTRY, LossSpec, loss_spec
from potstill.signals import SignalRequest, TeacherOutputs, TeacherSignal


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of a recipe's loss, checked against the registry when made.

    Args:
        loss: a name in `potstill.losses.REGISTRY`.
        weight: its weight in the sum, ``>= 0`` (0 = skipped).
        temperature: the KD temperature ``T`` (softmax of ``logits / T``, loss times
            ``T²``); must stay 1 for losses that take none.
        params: the loss's own parameters (jsd's ``beta``, skew_kl's ``alpha``).
        layers: hidden and attention terms only: ``(student_layer, teacher_layer)`` pairs
            (`potstill.losses.layers`), or None for the ``auto`` map, resolved against
            the two models by `resolve_layers` before training.
        heads: attention terms only: how head counts are paired (``grouped`` or ``mean``,
            `potstill.losses.inside`).

    >>> LossTerm("jsd", 0.5, 2.0, {"beta": 0.3}).params["beta"]
    0.3
    >>> LossTerm("tvd", params={"beta": 0.3})
    Traceback (most recent call last):
    ...
    ValueError: loss term tvd: beta applies only to jsd
    """

    loss: str
    weight: float = 1.0
    temperature: float = 1.0
    params: Mapping[str, float] = field(default_factory=dict)
    layers: tuple[tuple[int, int], ...] | None = None
    heads: HeadMapping = "grouped"

    def __post_init__(self) -> None:
        spec = loss_spec(self.loss)
        if not self.weight >= 0:
            raise ValueError(f"loss term {self.loss}: weight = {self.weight} must be >= 0")
        if not self.temperature > 0:
            raise ValueError(f"loss term {self.loss}: temperature must be > 0")
        if not spec.tempered and self.temperature != 1.0:
            raise ValueError(f"loss term {self.loss}: temperature applies only to KD terms")
        for name, value in self.params.items():
            if name not in spec.params:
                owners = [n for n, s in REGISTRY.items() if name in s.params]
                where = f"applies only to {', '.join(owners)}" if owners else "is not a parameter"
                raise ValueError(f"loss term {self.loss}: {name} {where}")
            spec.params[name].check(f"loss term {self.loss}: {name}", value)
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        if self.layers is not None:
            if spec.kind == "tokens":
                raise ValueError(
                    f"loss term {self.loss}: a layer map applies only to hidden and attention terms"
                )
            pairs = tuple((int(s), int(t)) for s, t in self.layers)
            if not pairs:
                raise ValueError(f"loss term {self.loss}: the layer map is empty")
            object.__setattr__(self, "layers", pairs)
        if self.heads != "grouped" and spec.kind != "attention":
            raise ValueError(f"loss term {self.loss}: heads applies only to attention terms")
        if self.heads not in ("grouped", "mean"):
            raise ValueError(f"loss term {self.loss}: heads = {self.heads!r}: give grouped or mean")

    @property
    def spec(self) -> LossSpec:
        return loss_spec(self.loss)


def signal_request(terms: Sequence[LossTerm]) -> SignalRequest:
    """What the teacher must produce for ``terms`` (nothing for cross-entropy alone).

    >>> signal_request([LossTerm("cross_entropy")]).empty
    True
    """
    active = [t for t in terms if t.weight > 0 and t.spec.needs_teacher]
    unresolved = [t.loss for t in active if t.spec.kind != "tokens" and t.layers is None]
    if unresolved:
        raise ValueError(
            f"loss terms {', '.join(unresolved)}: resolve the auto layer map against the two "
            "models first (resolve_layers)"
        )
    return SignalRequest(
        distributions=any(t.spec.kind == "tokens" for t in active),
        hidden_layers=tuple(
            sorted({t for term in active if term.spec.kind == "hidden" for _, t in term.layers})
        ),
        attention_layers=tuple(
            sorted({t for term in active if term.spec.kind == "attention" for _, t in term.layers})
        ),
    )


def resolve_layers(
    terms: Sequence[LossTerm],
    *,
    student_layers: int,
    teacher_layers: int,
    kept: Sequence[int] | None = None,
) -> list[LossTerm]:
    """``terms`` with every hidden/attention term's layer map made explicit (``auto``
    resolved, `potstill.losses.layers`) and checked against the two depths; an
    impossible map is a one-line ValueError.

    >>> [hidden] = resolve_layers([LossTerm("hidden_mse")], student_layers=2, teacher_layers=4)
    >>> hidden.layers
    ((1, 2),)
    """
    resolved = []
    for term in terms:
        kind = term.spec.kind
        if kind != "tokens":
            pairs = term.layers or auto_layer_map(
                kind, student_layers=student_layers, teacher_layers=teacher_layers, kept=kept
            )
            check_layer_map(
                term.loss,
                kind,
                pairs,
                student_layers=student_layers,
                teacher_layers=teacher_layers,
            )
            term = replace(term, layers=pairs)
        resolved.append(term)
    return resolved


def combine_losses(
    terms: Sequence[LossTerm],
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | TeacherSignal | None = None,
    mask: torch.Tensor | None = None,
    *,
    num_tokens: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the loss terms, and each term's unweighted value (detached).

    Every term, KD or not, counts the same tokens: ``mask & (labels != -100)``. Terms with
    weight 0 are skipped (neither computed nor reported). A part is keyed by its loss name,
    or by ``name@T<temperature>`` (plus ``,beta``/``,alpha`` and then ``#i`` as needed)
    when the same loss appears more than once.

    Args:
        terms: the recipe's loss terms.
        student_logits: ``(B, T, V)`` float logits, aligned with ``labels``.
        labels: ``(B, T)`` long target ids; ``-100`` marks an ignored token.
        teacher: ``(B, T, V)`` teacher logits or a `TeacherSignal`; required by KD terms.
        mask: optional ``(B, T)`` bool, True where a token counts.
        num_tokens: the global valid-token count, passed to every term.

    >>> logits, labels = torch.zeros(1, 2, 4), torch.tensor([[1, 2]])
    >>> terms = [LossTerm(loss="forward_kl", weight=0.5, temperature=2.0),
    ...          LossTerm(loss="cross_entropy", weight=0.5)]
    >>> total, parts = combine_losses(terms, logits, labels, teacher=logits)
    >>> sorted(parts), round(total.item(), 4)  # 0.5·0 + 0.5·log(4)
    (['cross_entropy', 'forward_kl'], 0.6931)
    """
    active = [
        (key, term) for key, term in zip(_part_keys(terms), terms, strict=True) if term.weight > 0
    ]
    if not active:
        raise ValueError("every loss term has weight 0: give at least one term a weight > 0")
    if teacher is None:
        kd_names = sorted({term.loss for _, term in active if term.spec.needs_teacher})
        if kd_names:
            raise ValueError(
                f"loss terms {', '.join(kd_names)} need the teacher's logits, but no teacher "
                "signal was given: pass teacher=, or keep only cross_entropy terms"
            )

    valid = labels != IGNORE_INDEX  # (B, T), the token set every term shares
    if mask is not None:
        valid = valid & mask.to(torch.bool)

    weighted: list[torch.Tensor] = []
    parts: dict[str, torch.Tensor] = {}
    for key, term in active:
        spec = term.spec
        if spec.kind != "tokens":
            raise ValueError(f"loss term {term.loss} compares {spec.kind}, not token logits")
        if not spec.needs_teacher:
            value = spec.fn(student_logits, labels, valid, num_tokens=num_tokens)
        else:
            value = spec.fn(
                student_logits,
                teacher,
                valid,
                term.temperature,
                num_tokens=num_tokens,
                **term.params,
            )
        parts[key] = value.detach()
        weighted.append(term.weight * value)
    return torch.stack(weighted).sum(), parts


def _part_keys(terms: Sequence[LossTerm]) -> list[str]:
    """Unique, readable keys: the bare loss name unless that name repeats."""
    repeats = Counter(term.loss for term in terms)
    keys = []
    for term in terms:
        key = term.loss
        if repeats[term.loss] > 1:
            key = f"{key}@T{term.temperature:g}"
            key += "".join(f",{name}{value:g}" for name, value in term.params.items())
        keys.append(key)
    seen = Counter(keys)
    counts: Counter[str] = Counter()
    unique = []
    for key in keys:
        if seen[key] > 1:
            counts[key] += 1
            key = f"{key}#{counts[key]}"
        unique.append(key)
    return unique


def inside_losses(
    terms: Sequence[LossTerm],
    student_hidden: Sequence[torch.Tensor],
    student_attentions: Sequence[torch.Tensor],
    teacher: TeacherOutputs,
    mask: torch.Tensor,
    *,
    num_tokens: int | torch.Tensor,
    projections: Mapping[str, torch.nn.Module] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the hidden-state and attention terms, and each term's value.

    A term's value is the mean of its losses over the pairs of its (resolved) layer map.

    Args:
        terms: hidden and attention terms with explicit layer maps (`resolve_layers`).
        student_hidden: the student's hidden states, index as HF's ``hidden_states``,
            each ``(B, T, H_s)``.
        student_attentions: the student's attention maps by block, ``(B, h, T, T)``.
        teacher: the teacher's states and maps at the mapped layers, same ``T``.
        mask: ``(B, T)`` bool, True at the positions that count.
        projections: ``"s{layer}"`` → the learned map of the student's states at that
            layer to the teacher's width (`hidden_projections`); none when equal widths.
    """
    projections = projections or {}
    weighted: list[torch.Tensor] = []
    parts: dict[str, torch.Tensor] = {}
    for key, term in zip(_part_keys(terms), terms, strict=True):
        if term.weight == 0:
            continue
        kind = term.spec.kind
        if kind == "tokens" or term.layers is None:
            raise ValueError(f"loss term {term.loss}: not a hidden/attention term with a layer map")
        values = []
        for student_layer, teacher_layer in term.layers:
            if kind == "hidden":
                state = student_hidden[student_layer]
                name = f"s{student_layer}"
                if name in projections:
                    state = projections[name](state)
                target = teacher.hidden_states[teacher_layer]
                values.append(term.spec.fn(state, target, mask, num_tokens=num_tokens))
            else:
                values.append(
                    term.spec.fn(
                        student_attentions[student_layer],
                        teacher.attentions[teacher_layer],
                        mask,
                        heads=term.heads,
                        num_tokens=num_tokens,
                    )
                )
        value = torch.stack(values).mean()
        parts[key] = value.detach()
        weighted.append(term.weight * value)
    if not weighted:
        raise ValueError("every hidden/attention term has weight 0")
    return torch.stack(weighted).sum(), parts
