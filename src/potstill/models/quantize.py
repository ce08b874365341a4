"""Quantize a causal LM through torchao: after training (PTQ) or while training (QAT).

What is quantized: every ``nn.Linear``, the input embedding and the output head. Weights
become int8 or int4, symmetric, one float32 scale per output row (per channel) or per
group of ``group_size`` input features; with ``activations: int8`` the inputs of the
linears are quantized on the fly to int8, asymmetric, per token. The output head is
always weight-only: its inputs stay float (it is the layer most sensitive to rounding, and
a tied head's weight is the embedding table, which has no activations to quantize). Other
embeddings (positional tables) and the norms stay float32.

Every quantized weight is a torchao ``IntxUnpackedToInt8Tensor`` (int8 values, int4 ones
held one to a byte), int8 included: it is the one layout torchao's QAT converts to, and it
serves both ``F.linear`` and ``F.embedding``. A tied head shares the embedding's quantized
tensor: it is quantized once, stored once, and reloaded tied.

QAT (`prepare_qat` / `convert_qat`) fake-quantizes exactly what PTQ quantizes: the
linears' weights (and their inputs with ``activations: int8``), the head's weight and the
embedding's weight (torchao's ``FakeQuantizedEmbedding``); not the norms, other
embeddings, nor the head's inputs. The converted model computes exactly what the
fake-quantized one did, and, before any training step, what `quantize_model` gives.

A quantized model is saved and loaded by `potstill.models.quantized_io` (`save_quantized`,
`load_quantized`) and the spec lives in `potstill.models.quant_spec`; this module
re-exports those names.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from potstill.models.quant_spec import (
    DEFAULT_INT4_GROUP_SIZE,
    QuantizationSpec,
    QuantLayers,
)
from potstill.models.quantized_io import (
    FORMAT_VERSION,
    SPEC_FILE,
    WEIGHTS_FILE,
    is_quantized,
    load_quantized,
    pack_int4,
    save_quantized,
    unpack_int4,
)
from potstill.util.errors import PotstillError

__all__ = [
    "DEFAULT_INT4_GROUP_SIZE",
    "FORMAT_VERSION",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "QuantizationSpec",
    "convert_qat",
    "is_quantized",
    "load_quantized",
    "pack_int4",
    "prepare_qat",
    "quantize_model",
    "save_quantized",
    "unpack_int4",
]


def quantize_model(model: torch.nn.Module, spec: QuantizationSpec) -> torch.nn.Module:
    """Quantize ``model`` in place (post-training) and return it.

    ``model`` must be a float32 model, not yet quantized nor prepared for QAT.
    """
    from torchao.quantization import quantize_

    layers = QuantLayers.of(model)
    _check_quantizable(model, layers, spec, verb="quantize")
    if spec.learn_scales:
        raise PotstillError(
            "learn_scales trains the scales, so it is for quantization-aware training "
            "(student.qat); post-training quantization computes them from the weights"
        )
    body_config, weight_only_config = _configs(spec)
    quantize_(model, body_config, filter_fn=_named(layers.body))
    # A tied head is not quantized on its own: it takes the embedding's quantized tensor.
    quantize_(model, weight_only_config, filter_fn=_named(layers.weight_only(tied_head=False)))
    layers.retie(model)
    return model


def prepare_qat(model: torch.nn.Module, spec: QuantizationSpec) -> torch.nn.Module:
    """Swap in fake-quantized layers for quantization-aware training, in place.

    Linears become ``FakeQuantizedLinear`` (weights, and inputs with ``activations:
    int8``; the head's weight only) and the embedding ``FakeQuantizedEmbedding`` (weight).
    Fake quantization rounds in the forward pass and passes gradients straight through
    (STE), so training learns weights that survive rounding. A tied head and embedding
    keep sharing one float weight. Finish with `convert_qat` and the same ``spec``.
    """
    layers = QuantLayers.of(model)
    _check_quantizable(model, layers, spec, verb="prepare for QAT")
    _qat_step(model, layers, spec, "prepare")
    if spec.learn_scales:
        _init_learned_scales(model, layers)
    return model


def convert_qat(model: torch.nn.Module, spec: QuantizationSpec) -> torch.nn.Module:
    """Turn a model trained after `prepare_qat` into a quantized one, in place.

    The converted model's logits equal the fake-quantized model's exactly.
    """
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    layers = QuantLayers.of(model)
    prepared = _prepared_spec(model, layers)
    if prepared is None:
        raise PotstillError("model is not prepared for QAT: call prepare_qat before training")
    if prepared != spec:
        raise PotstillError(
            f"convert_qat spec ({spec.describe()}) differs from the one the model was "
            f"prepared with ({prepared.describe()}); convert with the prepare_qat spec"
        )
    _qat_step(model, layers, spec, "convert")
    if layers.tied:  # back to a plain Linear, then onto the embedding's quantized tensor
        quantize_(model, QATConfig(step="convert"), filter_fn=_named([layers.head or ""]))
    layers.retie(model)
    return model


def _qat_step(
    model: torch.nn.Module, layers: QuantLayers, spec: QuantizationSpec, step: str
) -> None:
    """torchao's QAT ``prepare`` or ``convert`` over the body (the linears, with int8
    activations when asked) and the weight-only layers (embedding, head). A tied head is
    prepared with its embedding, and converted on its own (then re-tied by the caller)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    body_config, weight_only_config = _configs(spec)
    if step == "prepare" and spec.learn_scales:  # fake quantizers whose scales train
        body_config, weight_only_config = _learned_scale_configs(spec)
    else:
        body_config = QATConfig(body_config, step=step)
        weight_only_config = QATConfig(weight_only_config, step=step)
    quantize_(model, body_config, filter_fn=_named(layers.body))
    quantize_(
        model,
        weight_only_config,
        filter_fn=_named(layers.weight_only(tied_head=step == "prepare")),
    )


def _learned_scale_configs(spec: QuantizationSpec) -> tuple[Any, Any]:
    """QAT prepare configs whose weight scales are parameters (torchao range learning):
    (the body linears', with int8 per-token inputs when asked; the embedding and head's).
    torchao's convert then quantizes with the learned scales."""
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    dtype = torch.int4 if spec.weights == "int4" else torch.int8
    weights = IntxFakeQuantizeConfig(
        dtype,
        group_size=spec.group_size,
        granularity=None if spec.group_size else "per_channel",
        is_symmetric=True,
        is_dynamic=False,
        range_learning=True,
    )
    inputs = (
        IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
        if spec.activations == "int8"
        else None
    )
    body = QATConfig(activation_config=inputs, weight_config=weights, step="prepare")
    return body, QATConfig(weight_config=weights, step="prepare")


def _init_learned_scales(model: torch.nn.Module, layers: QuantLayers) -> None:
    """Give every learned-scale fake quantizer its first scales (from the weights), and a
    tied head its embedding's quantizer: one table, one set of scales."""
    from torchao.quantization.qat import initialize_fake_quantizers

    if layers.tied and layers.head:
        modules = dict(model.named_modules())
        modules[layers.head].weight_fake_quantizer = modules[layers.embedding].weight_fake_quantizer
    device = next(model.parameters()).device
    initialize_fake_quantizers(model, (torch.zeros(1, 2, dtype=torch.long, device=device),))


def _configs(spec: QuantizationSpec) -> tuple[Any, Any]:
    """torchao configs: (for the body linears, weight-only for the embedding and head)."""
    from torchao.quantization import (
        Int8DynamicActivationIntxWeightConfig,
        IntxWeightOnlyConfig,
        PerAxis,
        PerGroup,
    )

    dtype = torch.int4 if spec.weights == "int4" else torch.int8
    granularity = PerGroup(spec.group_size) if spec.group_size else PerAxis(0)
    weight_only = IntxWeightOnlyConfig(weight_dtype=dtype, granularity=granularity)
    if spec.activations == "none":
        return weight_only, weight_only
    body = Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity)
    return body, weight_only


def _named(names: list[str]) -> Any:
    """A ``quantize_`` filter that picks the modules called ``names``."""
    chosen = set(names)
    return lambda module, name: name in chosen


def _check_quantizable(
    model: torch.nn.Module, layers: QuantLayers, spec: QuantizationSpec, *, verb: str
) -> None:
    """Refuse a model already quantized or prepared, not float32, or ungroupable."""
    from torchao.utils import TorchAOBaseTensor

    if _prepared_spec(model, layers) is not None:
        raise PotstillError(
            f"cannot {verb}: the model is already prepared for QAT; finish it with convert_qat"
        )
    for name, param in model.named_parameters():
        if isinstance(param, TorchAOBaseTensor):
            raise PotstillError(
                f"cannot {verb}: the model is already quantized ({name}); start again from "
                "the float32 model (quantizing twice compounds the rounding)"
            )
        if param.dtype != torch.float32:
            raise PotstillError(f"cannot {verb}: {name} is {param.dtype}; quantize a float32 model")
    if spec.group_size is None:
        return
    bad = [name for name in layers.all() if layers.widths[name] % spec.group_size]
    if bad:
        divisor = math.gcd(*layers.widths.values())
        more = f" (and {len(bad) - 1} more layers)" if len(bad) > 1 else ""
        raise PotstillError(
            f"quantization group_size {spec.group_size} does not divide the "
            f"{layers.widths[bad[0]]} input features of {bad[0]}{more}; choose a divisor "
            f"of {divisor}"
        )


def _prepared_spec(model: torch.nn.Module, layers: QuantLayers) -> QuantizationSpec | None:
    """The spec a model was prepared for QAT with, read off its fake quantizers; None if
    it was not prepared."""
    from torchao.quantization import PerGroup
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    modules = dict(model.named_modules())
    fake = [
        modules[name]
        for name in [*layers.body, layers.embedding]
        if isinstance(modules[name], (FakeQuantizedLinear, FakeQuantizedEmbedding))
    ]
    if not fake:
        return None
    config = fake[0].weight_fake_quantizer.config
    granularity = config.granularity
    return QuantizationSpec(
        weights="int4" if config.dtype == torch.int4 else "int8",
        activations="int8" if getattr(fake[0], "activation_fake_quantizer", None) else "none",
        group_size=granularity.group_size if isinstance(granularity, PerGroup) else None,
        learn_scales=bool(config.range_learning),
    )
