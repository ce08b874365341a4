"""Export as one GGUF file for llama.cpp / ollama / LM Studio, in f16, q8_0 or q4_0, written
with the ``gguf`` package (llama architecture and byte-level BPE tokenizers only, for now).

A student quantized by potstill (``potstill quantize``, or trained quantization-aware) is
written with its own integers: int4 in groups of 32 as q4_0 and int8 as q8_0 hold exactly
the same integers, each block with its scale in float16. Re-quantizing its float weights with
llama.cpp's rounding instead would throw away what quantization-aware training learned."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potstill.models.export._load import _load, _refuse_existing
from potstill.util.errors import PotstillError
from potstill.util.io import readable

GGUF_QTYPES = ("f16", "q8_0", "q4_0")


def export_gguf(
    folder: str | Path,
    out_file: str | Path,
    *,
    qtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a llama.cpp GGUF file of a llama-architecture model, weights in ``qtype``.

    ``f16`` (the default for a float model): 2-D weights in float16. ``q8_0``: 8-bit blocks
    of 32. ``q4_0``: 4-bit blocks of 32, with the embedding/output matrix in q8_0. Norms
    stay float32 in every type, and a matrix whose rows are not a whole number of blocks
    falls back to float16 (as llama.cpp's converter does). q_proj/k_proj rows are permuted
    as llama.cpp's converter does for Llama rope; tied embeddings are written once, as
    ``token_embd``. A potstill-quantized folder is written with its own integers (the
    module docstring), in the one type that holds them; ``qtype`` may only name that type.
    """
    import gguf

    if qtype is not None and qtype not in GGUF_QTYPES:
        raise PotstillError(
            f"GGUF type {qtype!r} is not supported; choose one of {', '.join(GGUF_QTYPES)}"
        )
    out_file = Path(out_file)
    _refuse_existing(out_file, overwrite)
    model, tokenizer = _load(folder, dtype=torch.float32, quantized=True)
    own = _own_qtype(model, folder)
    if own is not None and qtype not in (None, own):
        raise PotstillError(
            f"{folder} is already quantized; its integers go into GGUF as {own}, not {qtype}: "
            f"drop --qtype (or give {own}), or export its float model to re-quantize"
        )
    qtype = own or qtype or "f16"
    config = model.config
    _check_llama(config)

    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        _write_llama_metadata(writer, config, qtype, name=Path(str(folder)).name)
        _write_tokenizer(writer, tokenizer, config)
        _write_llama_tensors(writer, model, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        readable(tmp)  # by ollama's own user too
        os.replace(tmp, out_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_file


def _check_llama(config: Any) -> None:
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    if config.model_type != "llama":
        raise PotstillError(
            f"export --to gguf supports llama-architecture models; this model is "
            f"{config.model_type} ({arch}): export it --to hf or --to onnx instead"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise PotstillError(
            "export --to gguf supports llama models without attention/MLP biases; this one "
            "has them: export it --to hf or --to onnx instead"
        )
    rope_type = _rope(config).get("rope_type", "default")
    if rope_type != "default":
        raise PotstillError(
            f"export --to gguf supports llama models with plain rope; this one uses "
            f"{rope_type!r} rope scaling: export it --to hf or --to onnx instead"
        )


def _rope(config: Any) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    params = dict(params or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def _write_llama_metadata(writer: Any, config: Any, qtype: str, *, name: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    file_types = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }
    writer.add_name(name)
    writer.add_file_type(file_types[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _write_tokenizer(writer: Any, tokenizer: Any, config: Any) -> None:
    """A byte-level BPE tokenizer as llama.cpp's ``gpt2`` model: tokens, types, merges, ids."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = json.loads(backend.to_str()) if backend is not None else {}
    bpe = state.get("model", {})
    pre = _pre_tokenizer_name(state.get("pre_tokenizer"))
    if bpe.get("type") != "BPE" or pre is None:
        raise PotstillError(
            "export --to gguf supports byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama 3, "
            "Qwen2); this model's tokenizer is not one: export it --to hf or --to onnx instead"
        )
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= config.vocab_size:
        raise PotstillError(
            f"the tokenizer has ids up to {max(vocab.values())} but the model only "
            f"{config.vocab_size} embeddings; resize the model's embeddings to the tokenizer"
        )
    by_id = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(config.vocab_size):
        if index not in by_id:  # an embedding row no token uses (vocab padded to a multiple)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(
                gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]])

    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is None:  # the model's config may name one the tokenizer does not
            token_id = getattr(config, f"{kind}_token_id", None)
            token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id
        if isinstance(token_id, int) and 0 <= token_id < config.vocab_size:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    # Say whether the tokenizer adds BOS/EOS, as measured: llama.cpp's default differs by type.
    bare = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    writer.add_add_bos_token(len(full) > len(bare) and full[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(full) > len(bare) and full[-1] == tokenizer.eos_token_id)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's name for how this tokenizer splits text before BPE; None if it has none.

    GPT-2's byte-level regex is ``gpt-2``, digits split one by one before it ``smollm``, and
    a regex split followed by byte-level mapping is named by its regex, from the table
    transformers reads GGUF files with (``llama3``, ``qwen2``, ``gpt-4o``, ...).
    """
    if not pre:
        return None
    parts = pre["pretokenizers"] if pre["type"] == "Sequence" else [pre]
    kinds = [part["type"] for part in parts]
    regex = parts[-1].get("use_regex", True)
    if kinds == ["ByteLevel"] and regex:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and regex:
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not regex:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS,
        )

        pattern = parts[0]["pattern"].get("Regex")
        return next((n for n, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == pattern), None)
    return None


def _write_llama_tensors(writer: Any, model: torch.nn.Module, qtype: str) -> None:
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = config.num_key_value_heads or heads
    for hf_name, weight in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp uses token_embd as the output when output.weight is absent
        found = names.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise PotstillError(
                f"export --to gguf: the tensor {hf_name} has no llama.cpp name; this llama "
                "variant is not supported: export it --to hf or --to onnx instead"
            )
        kind, name = found
        rows = {gguf.MODEL_TENSOR.ATTN_Q: heads, gguf.MODEL_TENSOR.ATTN_K: kv_heads}.get(kind)
        if _is_quantized(weight):
            ints, scales = _integers(weight)
            if rows is not None:  # a row's scales move with it
                ints, scales = rope_permute(ints, rows), rope_permute(scales, rows)
            array, ggml_type = _pack(ints.numpy(), scales.numpy(), qtype)
        else:
            data = weight.detach().to(torch.float32)
            if rows is not None:
                data = rope_permute(data, rows)
            embedding = kind in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT)
            array, ggml_type = _encode(data.numpy(), qtype, embedding=embedding)
        writer.add_tensor(name, array, raw_dtype=ggml_type)


def rope_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k projection rows from HF's rotate-half rope to llama.cpp's interleaved one.

    HF keeps each head's rope pairs as (first half, second half); llama.cpp as adjacent rows.
    ``weight`` is (n_heads * head_dim, in) or (n_heads * head_dim,). As llama.cpp's
    ``LlamaModel.permute``, with ``n_heads`` the kv head count for k_proj.

    >>> rope_permute(torch.arange(8.0), 2).tolist()
    [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    """
    rows = weight.shape[0]
    return (
        weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])  # (H, 2, D/2, ...)
        .swapaxes(1, 2)  # (H, D/2, 2, ...)
        .reshape(weight.shape)
    )


def _encode(data: np.ndarray, qtype: str, *, embedding: bool) -> tuple[np.ndarray, Any]:
    """``data`` as stored in the file, and its GGML type."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    if data.ndim == 1:
        return data.astype(np.float32), GGMLQuantizationType.F32
    wanted = {
        "f16": GGMLQuantizationType.F16,
        "q8_0": GGMLQuantizationType.Q8_0,
        "q4_0": GGMLQuantizationType.Q8_0 if embedding else GGMLQuantizationType.Q4_0,
    }[qtype]
    block, _ = GGML_QUANT_SIZES[wanted]
    if wanted == GGMLQuantizationType.F16 or data.shape[-1] % block:
        return data.astype(np.float16), GGMLQuantizationType.F16
    return quants.quantize(data, wanted), wanted


# --- a potstill-quantized model, integers kept -------------------------------------------------

GGUF_BLOCK = 32  # values per q4_0 / q8_0 block, each block one float16 scale


def _is_quantized(weight: torch.Tensor) -> bool:
    from torchao.utils import TorchAOBaseTensor

    return isinstance(weight, TorchAOBaseTensor)


def _own_qtype(model: torch.nn.Module, folder: str | Path) -> str | None:
    """The GGUF type that holds a quantized model's integers exactly; None for a float
    model. Refused where none does: groups other than 32 (a GGUF block has one scale per 32
    values), or activations quantized by the model (llama.cpp quantizes them its own way)."""
    weights = [p for p in model.parameters() if _is_quantized(p)]
    if not weights:
        return None
    kinds = set()
    for weight in weights:
        if getattr(weight, "activation_quantization", None) is not None:
            raise PotstillError(
                f"{folder} quantizes activations to int8, which GGUF cannot carry (llama.cpp "
                "quantizes them its own way): export a weight-only quantized model"
            )
        ints, scales = _integers(weight)
        group = ints.shape[-1] // scales.shape[-1]
        if group % GGUF_BLOCK:  # per channel is a multiple: every block gets the row's scale
            raise PotstillError(
                f"{folder} has {weight.target_dtype} weights in groups of {group}; a GGUF block "
                f"holds {GGUF_BLOCK} values under one scale: quantize with group_size 32"
            )
        kinds.add("q4_0" if weight.target_dtype == torch.int4 else "q8_0")
    if len(kinds) > 1:
        raise PotstillError(f"{folder} mixes int4 and int8 weights; GGUF export wants one type")
    return kinds.pop()


def _integers(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchao weight's integers (rows, cols) int8 and scales (rows, groups) float32; it
    must be symmetric (no zero point) and grouped along its rows."""
    ints, scales = weight.qdata, weight.scale.to(torch.float32)
    zero = getattr(weight, "zero_point", None)
    if zero is not None and bool(zero.ne(0).any()):
        raise PotstillError(
            "export --to gguf keeps symmetric integers only; this weight has zero points"
        )
    if weight.block_size[0] != 1 or scales.dim() != 2:
        raise PotstillError("export --to gguf keeps weights grouped along rows only")
    return ints, scales


def _pack(ints: np.ndarray, scales: np.ndarray, qtype: str) -> tuple[np.ndarray, Any]:
    """Integers (rows, cols) and their scales (rows, groups) as q4_0 or q8_0 blocks of 32
    (bytes (rows, cols / 32 * block bytes)): each block the float16 scale of its group,
    then its integers (q4_0: ``x + 8`` in a nibble, value ``j`` low and ``j + 16`` high)."""
    from gguf import GGMLQuantizationType

    rows, cols = ints.shape
    blocks = ints.reshape(rows * cols // GGUF_BLOCK, GGUF_BLOCK)
    per_block = np.repeat(scales, cols // GGUF_BLOCK // scales.shape[1], axis=1)
    d = per_block.reshape(-1, 1).astype(np.float16).view(np.uint8)  # (blocks, 2)
    if qtype == "q4_0":
        nibbles = (blocks.astype(np.int16) + 8).astype(np.uint8)
        packed = nibbles[:, : GGUF_BLOCK // 2] | (nibbles[:, GGUF_BLOCK // 2 :] << np.uint8(4))
        data, ggml_type = np.concatenate([d, packed], axis=1), GGMLQuantizationType.Q4_0
    else:
        data = np.concatenate([d, blocks.astype(np.int8).view(np.uint8)], axis=1)
        ggml_type = GGMLQuantizationType.Q8_0
    return data.reshape(rows, -1), ggml_type
