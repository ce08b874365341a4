"""What a quantization is (`QuantizationSpec`) and which layers it covers (`QuantLayers`).

One validated type serves the recipe (``student.qat``, ``eval.quantize``), the API
(``potstill.quantize``), the saved folder's record and the exporters, so the rules live in
one place. `potstill.models.quantize` applies a spec; `potstill.models.quantized_io`
saves and loads what it made; both import this module, and it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from potstill.util.errors import PotstillError
from potstill.util.schema import Strict

DEFAULT_INT4_GROUP_SIZE = 32


class QuantizationSpec(Strict):
    """How to quantize: weight width, activation width, group size.

    ``group_size`` input features share one scale; it must divide the input width of
    every quantized layer. int4 defaults to groups of 32; int8 defaults to ``None``, one
    scale per output channel (per row of the weight). Built directly, a bad value is a
    one-line `PotstillError`; inside a recipe, a one-line error naming the key.

    >>> QuantizationSpec("int4")
    QuantizationSpec(weights='int4', activations='none', group_size=32, learn_scales=False)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: Literal["int8", "int4"] = "int4"
    """The integer width of the quantized weights: every linear layer's, the input
    embedding's and the output head's (symmetric, one scale per channel or group)."""
    activations: Literal["none", "int8"] = "none"
    """`int8` also quantizes the linear layers' inputs on the fly (per token, asymmetric;
    the output head's stay float); `none` keeps every activation float."""
    group_size: int | None = Field(None, ge=1)
    """Input features sharing one scale; it must divide every quantized layer's input
    width. null = groups of 32 for int4, one scale per output channel for int8."""
    learn_scales: bool = False
    """`student.qat` only: each group's scale is a trained parameter (torchao range
    learning, as in LSQ), initialised from the weights, instead of recomputed from them at
    every step; the converted model stores the learned scales."""

    def __init__(
        self,
        weights: str = "int4",
        activations: str = "none",
        group_size: int | None = None,
        learn_scales: bool = False,
        **extra: Any,
    ) -> None:
        values = dict(weights=weights, activations=activations, group_size=group_size)
        try:
            super().__init__(**values, learn_scales=learn_scales, **extra)
        except ValidationError as e:
            raise PotstillError(_explain(e)) from None

    @field_validator("group_size", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"quantization group_size {value!r} must be an integer")
        return value

    @model_validator(mode="after")
    def _default_group(self) -> QuantizationSpec:
        if self.group_size is None and self.weights == "int4":
            self.__dict__["group_size"] = DEFAULT_INT4_GROUP_SIZE
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QuantizationSpec:
        """A spec from a saved record or a mapping (unknown keys refused in one line)."""
        return cls(**values)

    def describe(self) -> str:
        """One line for messages, e.g. ``int4 weights in groups of 32, float activations``."""
        grouping = f"in groups of {self.group_size}" if self.group_size else "per channel"
        acts = "int8 activations" if self.activations == "int8" else "float activations"
        learned = ", learned scales" if self.learn_scales else ""
        return f"{self.weights} weights {grouping}{learned}, {acts}"


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "spec"
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        known = sorted(QuantizationSpec.model_fields)
        return f"quantization keys [{key!r}] unknown: use {known}"
    if first["type"] == "literal_error":
        choices = {"weights": "'int8' or 'int4'", "activations": "'none' or 'int8'"}
        return f"quantization {key} {value!r} unknown: choose {choices.get(key, 'another')}"
    if first["type"] == "greater_than_equal":
        return f"quantization {key} {value} must be at least 1"
    message = first["msg"].removeprefix("Value error, ")
    return message if message.startswith("quantization") else f"quantization {key}: {message}"


@dataclass(frozen=True)
class QuantLayers:
    """The names of the layers to quantize, by role."""

    body: list[str]  # every Linear but the head: the spec's weights and activations
    embedding: str
    head: str | None
    tied: bool  # the head's weight is the embedding's
    widths: dict[str, int]  # input features (the grouped dimension) of each layer

    @classmethod
    def of(cls, model: torch.nn.Module) -> QuantLayers:
        if hasattr(model, "peft_config"):
            raise PotstillError(
                "quantization takes a plain model, not a PEFT adapter model: merge the "
                "adapters first (merge_and_unload), or train with adapter: full"
            )
        names = {id(module): name for name, module in model.named_modules()}
        embed = model.get_input_embeddings()
        head = model.get_output_embeddings()
        head_name = names.get(id(head)) if head is not None else None
        linears = {
            name: module.in_features
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        return cls(
            body=[name for name in linears if name != head_name],
            embedding=names[id(embed)],
            head=head_name,
            tied=head is not None and head.weight is embed.weight,
            widths={**linears, names[id(embed)]: embed.embedding_dim},
        )

    def weight_only(self, *, tied_head: bool) -> list[str]:
        """The embedding, and the head unless it is tied and ``tied_head`` is False."""
        if self.head is None or (self.tied and not tied_head):
            return [self.embedding]
        return [self.embedding, self.head]

    def all(self) -> list[str]:
        return [*self.body, *self.weight_only(tied_head=False)]

    def retie(self, model: torch.nn.Module) -> None:
        """Point a tied head at the embedding's (replaced) weight again."""
        if self.tied:
            model.get_output_embeddings().weight = model.get_input_embeddings().weight
