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

A saved model is a folder: ``config.json``, the tokenizer, ``model.safetensors`` (no
pickle; torchao's layout, with int4 values packed two to a byte and the all-zero zero
points of symmetric quantization left out) and ``potstill_quantization.json`` (the spec,
the torchao version, the format version). Only `load_quantized` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from potstill.util.errors import PotstillError
from potstill.util.io import atomic_dir, atomic_write_json

SPEC_FILE = "potstill_quantization.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
DEFAULT_INT4_GROUP_SIZE = 32
# safetensors header entries: stored tensor name -> shape as torchao holds it
_PACKED_KEY = "potstill.int4x2"  # int4 values packed two to a byte
_ZEROS_KEY = "potstill.zero_points"  # all-zero int8 zero points (symmetric), not stored
_ACT_INT8 = "int8_asym_per_token"  # torchao's IntxUnpackedToInt8Tensor activation mode


@dataclass(frozen=True)
class QuantizationSpec:
    """How to quantize: weight width, activation width, group size.

    ``group_size`` input features share one scale; it must divide the input width of
    every quantized layer. int4 defaults to groups of 32; int8 defaults to ``None``, one
    scale per output channel (per row of the weight).

    >>> QuantizationSpec("int4")
    QuantizationSpec(weights='int4', activations='none', group_size=32)
    """

    weights: Literal["int8", "int4"] = "int4"
    activations: Literal["none", "int8"] = "none"
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.weights not in ("int8", "int4"):
            raise PotstillError(
                f"quantization weights {self.weights!r} unknown: choose 'int8' or 'int4'"
            )
        if self.activations not in ("none", "int8"):
            raise PotstillError(
                f"quantization activations {self.activations!r} unknown: choose 'none' "
                "(weight-only) or 'int8' (dynamic, per token)"
            )
        group = self.group_size
        if group is not None and (isinstance(group, bool) or not isinstance(group, int)):
            raise PotstillError(f"quantization group_size {group!r} must be an integer")
        if group is not None and group < 1:
            raise PotstillError(f"quantization group_size {group} must be at least 1")
        if group is None and self.weights == "int4":
            object.__setattr__(self, "group_size", DEFAULT_INT4_GROUP_SIZE)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QuantizationSpec:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PotstillError(f"quantization keys {unknown} unknown: use {sorted(known)}")
        return cls(**values)

    def describe(self) -> str:
        """One line for messages, e.g. ``int4 weights in groups of 32, float activations``."""
        grouping = f"in groups of {self.group_size}" if self.group_size else "per channel"
        acts = "int8 activations" if self.activations == "int8" else "float activations"
        return f"{self.weights} weights {grouping}, {acts}"


def quantize_model(model: torch.nn.Module, spec: QuantizationSpec) -> torch.nn.Module:
    """Quantize ``model`` in place (post-training) and return it.

    ``model`` must be a float32 model, not yet quantized nor prepared for QAT.
    """
    from torchao.quantization import quantize_

    layers = _Layers.of(model)
    _check_quantizable(model, layers, spec, verb="quantize")
    body_config, weight_only_config = _configs(spec)
    quantize_(model, body_config, filter_fn=_named(layers.body))
    # A tied head is not quantized on its own: it takes the embedding's quantized tensor.
    quantize_(model, weight_only_config, filter_fn=_named(layers.weight_only(tied_head=False)))
    _retie(model, layers)
    return model


def prepare_qat(model: torch.nn.Module, spec: QuantizationSpec) -> torch.nn.Module:
    """Swap in fake-quantized layers for quantization-aware training, in place.

    Linears become ``FakeQuantizedLinear`` (weights, and inputs with ``activations:
    int8``; the head's weight only) and the embedding ``FakeQuantizedEmbedding`` (weight).
    Fake quantization rounds in the forward pass and passes gradients straight through
    (STE), so training learns weights that survive rounding. A tied head and embedding
    keep sharing one float weight. Finish with `convert_qat` and the same ``spec``.
    """
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    layers = _Layers.of(model)
    _check_quantizable(model, layers, spec, verb="prepare for QAT")
    body_config, weight_only_config = _configs(spec)
    quantize_(model, QATConfig(body_config, step="prepare"), filter_fn=_named(layers.body))
    quantize_(
        model,
        QATConfig(weight_only_config, step="prepare"),
        filter_fn=_named(layers.weight_only(tied_head=True)),
    )
    return model


def convert_qat(model: torch.nn.Module, spec: QuantizationSpec) -> torch.nn.Module:
    """Turn a model trained after `prepare_qat` into a quantized one, in place.

    The converted model's logits equal the fake-quantized model's exactly.
    """
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    layers = _Layers.of(model)
    prepared = _prepared_spec(model, layers)
    if prepared is None:
        raise PotstillError("model is not prepared for QAT: call prepare_qat before training")
    if prepared != spec:
        raise PotstillError(
            f"convert_qat spec ({spec.describe()}) differs from the one the model was "
            f"prepared with ({prepared.describe()}); convert with the prepare_qat spec"
        )
    body_config, weight_only_config = _configs(spec)
    quantize_(model, QATConfig(body_config, step="convert"), filter_fn=_named(layers.body))
    quantize_(
        model,
        QATConfig(weight_only_config, step="convert"),
        filter_fn=_named(layers.weight_only(tied_head=False)),
    )
    if layers.tied:  # back to a plain Linear, then onto the embedding's quantized tensor
        quantize_(model, QATConfig(step="convert"), filter_fn=_named([layers.head or ""]))
    _retie(model, layers)
    return model


def save_quantized(
    model: torch.nn.Module, tokenizer: Any, folder: str | Path, spec: QuantizationSpec
) -> None:
    """Write a quantized model as an HF-like folder, atomically (safetensors only).

    ``model`` must be quantized as ``spec`` says (`quantize_model`, or `convert_qat`).
    """
    from safetensors.torch import save_file
    from torchao import __version__ as torchao_version

    layers = _Layers.of(model)
    state = model.state_dict()
    _check_layout(state, layers, spec, source="the model")
    if layers.tied:
        del state[f"{layers.head}.weight"]  # stored once, as the embedding
    tensors, metadata = _flatten(state)
    with atomic_dir(folder) as tmp:
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=metadata)
        atomic_write_json(
            tmp / SPEC_FILE,
            {
                "format_version": FORMAT_VERSION,
                "spec": dataclasses.asdict(spec),
                "torchao_version": torchao_version,
            },
        )


def load_quantized(folder: str | Path) -> tuple[torch.nn.Module, Any]:
    """Load ``(model, tokenizer)`` written by `save_quantized`; the model in eval mode.

    The architecture is built from ``config.json``, the saved tensors are checked against
    the saved spec and replace its weights: its logits equal the saved model's.
    """
    from safetensors import safe_open
    from torchao import __version__ as torchao_version
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not is_quantized(folder):
        raise PotstillError(
            f"{folder} holds no quantized model (no {SPEC_FILE}); write one with "
            "save_quantized, or load a float model with the usual loader"
        )
    record = json.loads((folder / SPEC_FILE).read_text())
    if record.get("format_version") != FORMAT_VERSION:
        raise PotstillError(
            f"{folder / SPEC_FILE} has format {record.get('format_version')}, this potstill "
            f"reads format {FORMAT_VERSION}: quantize the float model again with this version"
        )
    spec = QuantizationSpec.from_dict(record["spec"])
    saved_with = record.get("torchao_version")
    try:
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        state, leftover = _unflatten(tensors, metadata)
    except Exception as e:  # a corrupt file, or torchao's format changed under it
        raise PotstillError(
            f"{folder / WEIGHTS_FILE} could not be read ({_first_line(e)}); it was written "
            f"with torchao {saved_with}, this is torchao {torchao_version}"
        ) from e
    if leftover:
        raise PotstillError(
            f"{folder / WEIGHTS_FILE} has tensors no layer owns ({sorted(leftover)[:3]}); "
            "save the model again with save_quantized"
        )

    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    layers = _Layers.of(model)
    _check_layout(state, layers, spec, source=str(folder / WEIGHTS_FILE))
    expected = set(model.state_dict()) - ({f"{layers.head}.weight"} if layers.tied else set())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise PotstillError(
            f"{folder / WEIGHTS_FILE} does not match its config.json (missing {missing[:3]}, "
            f"unexpected {extra[:3]}); save the model again with save_quantized"
        )
    try:  # assign: the quantized tensors replace the float weights, whatever their class
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # a shape that is not the config's
        raise PotstillError(
            f"{folder / WEIGHTS_FILE} does not match its config.json ({_first_line(e)}); "
            "save the model again with save_quantized"
        ) from e
    modules = dict(model.named_modules())
    for name in layers.all():
        modules[name].weight.requires_grad_(False)  # as quantize_ leaves them
    _retie(model, layers)
    model.eval()

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def is_quantized(folder: str | Path) -> bool:
    """Whether ``folder`` holds a model written by `save_quantized`."""
    return (Path(folder) / SPEC_FILE).is_file()


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Pack int4 values, two to a byte: int8 (any shape) in [-8, 7] -> uint8 (ceil(N / 2),).

    Value ``2i`` (in flattened order) is the low nibble of byte ``i`` and value ``2i + 1``
    the high nibble, each in 4-bit two's complement; an odd count leaves the last high
    nibble 0. `unpack_int4` with the original shape undoes it exactly.

    >>> packed = pack_int4(torch.tensor([1, -2, 7], dtype=torch.int8))
    >>> packed.tolist(), unpack_int4(packed, (3,)).tolist()
    ([225, 7], [1, -2, 7])
    """
    flat = values.reshape(-1)
    if values.dtype != torch.int8 or bool(((flat < -8) | (flat > 7)).any()):
        raise ValueError(f"pack_int4 takes int8 values in [-8, 7], got {values.dtype}")
    nibbles = (flat & 0xF).to(torch.uint8)  # two's complement: -2 -> 0b1110
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    pairs = nibbles.view(-1, 2)  # (ceil(N / 2), 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_int4(packed: torch.Tensor, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """Unpack `pack_int4`'s bytes (uint8, (ceil(N / 2),)) into int8 values of ``shape``."""
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.shape != ((n + 1) // 2,):
        raise ValueError(
            f"unpack_int4 needs {(n + 1) // 2} uint8 bytes for shape {tuple(shape)}, got "
            f"{packed.dtype} of shape {tuple(packed.shape)}"
        )
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(-1)[:n]  # (N,)
    return ((nibbles.to(torch.int8) ^ 8) - 8).reshape(tuple(shape))  # sign-extend 4 bits


def _flatten(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state dict as plain tensors and a string header for safetensors.

    torchao splits each quantized weight into ``{module}._weight_{qdata,scale,zero_point}``
    and describes it in the header; then int4 ``qdata`` is packed two values to a byte,
    and zero points are dropped when all zero (always, for symmetric quantization).
    """
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    tensors, metadata = flatten_tensor_state_dict(state)
    packed, zeros = {}, {}
    for name, tensor in state.items():
        if not _is_quantized_tensor(tensor):
            continue
        module, attr = name.rsplit(".", 1)
        qdata, zero_point = f"{module}._{attr}_qdata", f"{module}._{attr}_zero_point"
        if tensor.target_dtype == torch.int4:
            packed[qdata] = list(tensors[qdata].shape)
            tensors[qdata] = pack_int4(tensors[qdata])
        if tensors[zero_point].dtype == torch.int8 and not tensors[zero_point].any():
            zeros[zero_point] = list(tensors.pop(zero_point).shape)
    header = {_PACKED_KEY: json.dumps(packed), _ZEROS_KEY: json.dumps(zeros), "format": "pt"}
    return tensors, {**metadata, **header}


def _unflatten(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Undo `_flatten`: (the state dict, the tensors no entry of the header claims)."""
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    tensors, metadata = dict(tensors), dict(metadata)
    for key, shape in json.loads(metadata.pop(_PACKED_KEY, "{}")).items():
        tensors[key] = unpack_int4(tensors[key], shape)
    for key, shape in json.loads(metadata.pop(_ZEROS_KEY, "{}")).items():
        tensors[key] = torch.zeros(shape, dtype=torch.int8)
    metadata.pop("format", None)
    return unflatten_tensor_state_dict(tensors, metadata)


@dataclass(frozen=True)
class _Layers:
    """The names of the layers to quantize, by role."""

    body: list[str]  # every Linear but the head: the spec's weights and activations
    embedding: str
    head: str | None
    tied: bool  # the head's weight is the embedding's
    widths: dict[str, int]  # input features (the grouped dimension) of each layer

    @classmethod
    def of(cls, model: torch.nn.Module) -> _Layers:
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


def _retie(model: torch.nn.Module, layers: _Layers) -> None:
    if layers.tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def _is_quantized_tensor(tensor: torch.Tensor) -> bool:
    from torchao.quantization import IntxUnpackedToInt8Tensor

    return isinstance(tensor, IntxUnpackedToInt8Tensor)


def _check_quantizable(
    model: torch.nn.Module, layers: _Layers, spec: QuantizationSpec, *, verb: str
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


def _prepared_spec(model: torch.nn.Module, layers: _Layers) -> QuantizationSpec | None:
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
    )


def _check_layout(
    state: dict[str, torch.Tensor], layers: _Layers, spec: QuantizationSpec, *, source: str
) -> None:
    """Every layer's weight in ``state`` is quantized as ``spec`` says, or one error line."""
    dtype = torch.int4 if spec.weights == "int4" else torch.int8
    for name in layers.all():
        weight = state.get(f"{name}.weight")
        if weight is None or not _is_quantized_tensor(weight):
            raise PotstillError(
                f"{name} in {source} is not quantized; quantize the model with quantize_model "
                "(or convert_qat after QAT) and save it with save_quantized"
            )
        group = spec.group_size or layers.widths[name]
        acts = _ACT_INT8 if spec.activations == "int8" and name in layers.body else None
        found = (weight.target_dtype, tuple(weight.block_size), weight.activation_quantization)
        if found != (dtype, (1, group), acts) or weight.dtype != torch.float32:
            raise PotstillError(
                f"{name} in {source} is quantized as {found[0]} in blocks {found[1]} with "
                f"activations {found[2]}, not as the spec says ({spec.describe()}); save with "
                "the spec the model was quantized with"
            )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
