"""A quantized model on disk: `save_quantized` writes it, `load_quantized` reads it back.

A saved model is a folder: ``config.json``, the tokenizer, ``model.safetensors`` (no
pickle; torchao's layout, with int4 values packed two to a byte (`pack_int4`) and the
all-zero zero points of symmetric quantization left out) and ``potstill_quantization.json``
(the spec, the torchao version, the format version). Only `load_quantized` reads it back.

`potstill.models.quantize` re-exports every public name here; the spec and the layer
roles come from `potstill.models.quant_spec`, so neither module imports the other back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from potstill.models.quant_spec import QuantizationSpec, QuantLayers
from potstill.util.errors import PotstillError, first_line
from potstill.util.io import atomic_dir, atomic_write_json

SPEC_FILE = "potstill_quantization.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
# safetensors header entries: stored tensor name -> shape as torchao holds it
_PACKED_KEY = "potstill.int4x2"  # int4 values packed two to a byte
_ZEROS_KEY = "potstill.zero_points"  # all-zero int8 zero points (symmetric), not stored
_ACT_INT8 = "int8_asym_per_token"  # torchao's IntxUnpackedToInt8Tensor activation mode


def save_quantized(
    model: torch.nn.Module, tokenizer: Any, folder: str | Path, spec: QuantizationSpec
) -> None:
    """Write a quantized model as an HF-like folder, atomically (safetensors only).

    ``model`` must be quantized as ``spec`` says (`quantize_model`, or `convert_qat`).
    """
    from safetensors.torch import save_file
    from torchao import __version__ as torchao_version

    layers = QuantLayers.of(model)
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
                "spec": spec.model_dump(),
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
            f"{folder / WEIGHTS_FILE} could not be read ({first_line(e)}); it was written "
            f"with torchao {saved_with}, this is torchao {torchao_version}"
        ) from e
    if leftover:
        raise PotstillError(
            f"{folder / WEIGHTS_FILE} has tensors no layer owns ({sorted(leftover)[:3]}); "
            "save the model again with save_quantized"
        )

    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    layers = QuantLayers.of(model)
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
            f"{folder / WEIGHTS_FILE} does not match its config.json ({first_line(e)}); "
            "save the model again with save_quantized"
        ) from e
    modules = dict(model.named_modules())
    for name in layers.all():
        modules[name].weight.requires_grad_(False)  # as quantize_ leaves them
    layers.retie(model)
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


def _is_quantized_tensor(tensor: torch.Tensor) -> bool:
    from torchao.quantization import IntxUnpackedToInt8Tensor

    return isinstance(tensor, IntxUnpackedToInt8Tensor)


def _check_layout(
    state: dict[str, torch.Tensor], layers: QuantLayers, spec: QuantizationSpec, *, source: str
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
