"""Export a causal-LM student to the formats people run, and read each export back to check it.

- ``hf``: a merged HF folder (safetensors), optionally with the PEFT adapter beside it.
- ``gguf``: one file for llama.cpp / ollama / LM Studio, in f16, q8_0 or q4_0, written with the
  ``gguf`` package (llama architecture only, for now; SmolLM2 is llama).
- ``onnx``: ``input_ids (B, T) int64 -> logits (B, T, V) float32`` for onnxruntime, without a KV
  cache, with the tokenizer files beside it.

The source is an HF folder (``config.json``, weights, tokenizer; a student saved by
`save_student`, possibly with ``adapter/`` beside), a PEFT adapter folder (merged onto its
base here), or ``bundled:NAME``. Every export is atomic: it is written to a temporary path
next to its target and renamed into place, so a failed export leaves nothing behind and
never touches an existing output. An existing output is refused unless ``overwrite=True``.

The checks run the same token ids through the HF model and the export and compare logits
(`ExportCheck`); the tolerances each format is held to are in `GGUF_TOLERANCES`,
`LLAMA_CPP_TOLERANCES` and `ONNX_TOLERANCE`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potstill.models.load import quantized_folder, resolve
from potstill.util.errors import PotstillError
from potstill.util.io import atomic_dir

GGUF_QTYPES = ("f16", "q8_0", "q4_0")

PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "To be, or not to be, that is the question:",
    "def add(a, b):\n    return a + b\n",
)


@dataclass(frozen=True)
class ExportCheck:
    """An export's logits against the HF model's, on the same token ids.

    ``max_abs_diff`` is the largest |logit difference| over every position and token,
    ``top1_agreement`` the share of positions where both pick the same next token,
    ``mean_kl`` the mean over positions of KL(HF || export) of the next-token distributions,
    ``logit_scale`` the largest |HF logit| (to read the difference against), and
    ``tokens_match`` whether the export's own tokenizer gives the HF ids (None: not checked).
    """

    max_abs_diff: float
    top1_agreement: float
    mean_kl: float
    logit_scale: float
    tokens_match: bool | None

    def within(self, tolerance: Tolerance) -> bool:
        return (
            self.max_abs_diff <= tolerance.max_abs_diff * max(1.0, self.logit_scale)
            and self.top1_agreement >= tolerance.min_top1
        )


@dataclass(frozen=True)
class Tolerance:
    """``max_abs_diff`` is relative to the logit scale (absolute when the logits are under 1)."""

    max_abs_diff: float
    min_top1: float


# What the tiny test Llama (hidden 32, logits under 1) is held to, measured with headroom: f16
# rounds weights to 11 significant bits, q8_0 to 8 bits per block of 32, q4_0 to 4 bits (its
# embedding/output matrix kept in q8_0, as llama.cpp keeps that matrix in a finer type).
# Measured on the bundled SmolLM2-135M (logits up to 38), transformers read-back / llama.cpp:
# f16 0.038 / 0.087 max diff, top-1 1.0 / 1.0; q8_0 1.3 / 1.9, top-1 0.92 / 0.89; q4_0 16 / 16,
# top-1 0.69 / 0.72. Only f16 holds its bound there: a 135M model loses much to 4 bits (and the
# bundled weights are already dequantized from Q4_1); quantizing the same weights in torch
# gives the same numbers, so that loss is the format's, not the writer's.
GGUF_TOLERANCES = {
    "f16": Tolerance(max_abs_diff=2e-3, min_top1=0.99),
    "q8_0": Tolerance(max_abs_diff=2e-2, min_top1=0.95),
    "q4_0": Tolerance(max_abs_diff=2e-1, min_top1=0.90),
}
# llama.cpp also computes in lower precision (f16 KV cache, activations quantized to q8 for
# the quantized matmuls): a little further off, within the same bounds but for f16.
LLAMA_CPP_TOLERANCES = {**GGUF_TOLERANCES, "f16": Tolerance(max_abs_diff=5e-3, min_top1=0.99)}
# float32 on both sides: only the kernels' summation order differs (SmolLM2: 1.4e-4 at 38).
ONNX_TOLERANCE = Tolerance(max_abs_diff=1e-4, min_top1=1.0)


# ---- hf ---------------------------------------------------------------------------------


def export_hf(
    folder: str | Path, out: str | Path, *, keep_adapter: bool = False, overwrite: bool = False
) -> Path:
    """Write a merged HF folder (``config.json``, ``model.safetensors``, tokenizer) at ``out``.

    With ``keep_adapter`` the student's ``adapter/`` (PEFT) is copied beside the merged weights,
    with ``export.json`` naming the base model the adapter applies to.
    """
    out = Path(out)
    adapter = Path(folder) / "adapter"
    if keep_adapter and not (adapter / "adapter_config.json").is_file():
        raise PotstillError(
            f"export --to hf --keep-adapter: {folder} has no adapter/ (the student was not "
            "trained with LoRA/PiSSA); export without --keep-adapter"
        )
    _refuse_existing(out, overwrite)
    model, tokenizer = _load(folder, dtype="auto")
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if keep_adapter:
            shutil.copytree(adapter, tmp / "adapter")
            base = json.loads((adapter / "adapter_config.json").read_text())
            base_ref = base.get("base_model_name_or_path")
            note = {
                "weights": "merged: the adapter is already applied to model.safetensors",
                "adapter": "adapter",
                "adapter_base": base_ref,
                # False: the adapter was trained on a model derived from that base (a layer
                # subset, say), which is not saved; the merged weights are the ones to use.
                "adapter_base_same_shape": _same_shape(base_ref, model.config),
                "use_adapter": "PeftModel.from_pretrained(<adapter_base model>, 'adapter')",
            }
            (tmp / "export.json").write_text(json.dumps(note, indent=2) + "\n")
    return out


def _same_shape(ref: str | None, config: Any) -> bool | None:
    """Whether the local model folder ``ref`` has ``config``'s shape; None if not local."""
    path = Path(ref or "") / "config.json"
    if not ref or not path.is_file():
        return None
    base = json.loads(path.read_text())
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")
    return all(base.get(key) == getattr(config, key, None) for key in keys)


# ---- gguf -------------------------------------------------------------------------------


def export_gguf(
    folder: str | Path, out_file: str | Path, *, qtype: str = "f16", overwrite: bool = False
) -> Path:
    """Write a llama.cpp GGUF file of a llama-architecture model, weights in ``qtype``.

    ``f16``: 2-D weights in float16. ``q8_0``: 8-bit blocks of 32. ``q4_0``: 4-bit blocks of
    32, with the embedding/output matrix in q8_0. Norms stay float32 in every type, and a
    matrix whose rows are not a whole number of blocks falls back to float16 (as llama.cpp's
    converter does). q_proj/k_proj rows are permuted as llama.cpp's converter does for Llama
    rope; tied embeddings are written once, as ``token_embd``.
    """
    import gguf

    if qtype not in GGUF_QTYPES:
        raise PotstillError(
            f"GGUF type {qtype!r} is not supported; choose one of {', '.join(GGUF_QTYPES)}"
        )
    out_file = Path(out_file)
    _refuse_existing(out_file, overwrite)
    model, tokenizer = _load(folder, dtype=torch.float32)
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
        data = weight.detach().to(torch.float32)
        if kind == gguf.MODEL_TENSOR.ATTN_Q:
            data = rope_permute(data, heads)
        elif kind == gguf.MODEL_TENSOR.ATTN_K:
            data = rope_permute(data, kv_heads)
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


# ---- onnx -------------------------------------------------------------------------------


class LogitsOnly(torch.nn.Module):
    """``input_ids`` (B, T) int64 -> ``logits`` (B, T, V) float32, no KV cache, no mask.

    Without a mask every position attends to all earlier ones, so batch rows must not be
    left-padded (right padding is harmless: a causal model never sees later tokens).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits  # (B, T, V)


def export_onnx(folder: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model.onnx`` (`LogitsOnly`, dynamic batch and sequence axes) and the tokenizer.

    Weights larger than ONNX's 2 GB protobuf limit go to ``model.onnx.data`` beside it.
    """
    out_dir = Path(out_dir)
    _refuse_existing(out_dir, overwrite)
    model, tokenizer = _load(folder, dtype=torch.float32, attn_implementation="eager")
    # Batch 2, length 5: the exporter would fix a dimension of size 1 as a constant.
    example = torch.zeros(2, 5, dtype=torch.long)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=model.config.max_position_embeddings)
    with atomic_dir(out_dir) as tmp:
        torch.onnx.export(
            LogitsOnly(model).eval(),
            (example,),
            tmp / "model.onnx",
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: sequence}},
            dynamo=True,
            verbose=False,
            external_data=_nbytes(model) > 1 << 30,
        )
        tokenizer.save_pretrained(tmp)
        model.config.to_json_file(tmp / "config.json")
    return out_dir


def _nbytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---- checks -----------------------------------------------------------------------------


def check_gguf(
    folder: str | Path, gguf_file: str | Path, *, prompts: Sequence[str] = PROMPTS
) -> ExportCheck:
    """Load the GGUF with transformers (it dequantizes) and compare logits with the HF model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_file)
    model, tokenizer = _load(folder, dtype=torch.float32)
    ids = [tokenizer.encode(p) for p in prompts]
    exported = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with torch.no_grad():
        theirs = [exported(torch.tensor([row])).logits[0] for row in ids]
    return _compare(_logits(model, ids), theirs, _same_tokens(tokenizer, gguf_tokenizer, prompts))


def check_llama_cpp(
    folder: str | Path, gguf_file: str | Path, *, prompts: Sequence[str] = PROMPTS
) -> ExportCheck:
    """Run the GGUF in llama.cpp (``llama_cpp``, optional) and compare logits with the HF model."""
    try:
        from llama_cpp import Llama
    except ImportError as e:
        raise PotstillError(
            "checking a GGUF in llama.cpp needs llama-cpp-python: pip install llama-cpp-python"
        ) from e

    model, tokenizer = _load(folder, dtype=torch.float32)
    ids = [tokenizer.encode(p) for p in prompts]
    n_ctx = max(256, *(len(row) for row in ids))
    llm = Llama(model_path=str(gguf_file), logits_all=True, n_ctx=n_ctx, verbose=False)
    theirs = []
    for row in ids:
        llm.reset()
        llm.eval(row)
        theirs.append(torch.from_numpy(np.array(llm.scores[: len(row)], dtype=np.float32)))
    matches = all(
        llm.tokenize(p.encode(), add_bos=True, special=False) == row
        for p, row in zip(prompts, ids, strict=True)
    )
    return _compare(_logits(model, ids), theirs, matches)


def check_onnx(
    folder: str | Path, onnx_dir: str | Path, *, prompts: Sequence[str] = PROMPTS
) -> ExportCheck:
    """Run ``model.onnx`` in onnxruntime and compare logits with the HF model.

    Each prompt runs alone (sequence lengths vary), then all together cut to the shortest
    (batch size varies), so both dynamic axes are exercised.
    """
    import onnxruntime
    from transformers import AutoTokenizer

    onnx_dir = Path(onnx_dir)
    model, tokenizer = _load(folder, dtype=torch.float32)
    ids = [tokenizer.encode(p) for p in prompts]
    shortest = min(len(row) for row in ids)
    runs = [*ids, [row[:shortest] for row in ids]]
    session = onnxruntime.InferenceSession(
        str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    ours, theirs = [], []
    for batch in runs:
        batch = batch if isinstance(batch[0], list) else [batch]
        (logits,) = session.run(["logits"], {"input_ids": np.array(batch, dtype=np.int64)})
        with torch.no_grad():
            ours.append(model(torch.tensor(batch)).logits.flatten(0, 1))  # (B*T, V)
        theirs.append(torch.from_numpy(logits).flatten(0, 1))
    onnx_tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    return _compare(ours, theirs, _same_tokens(tokenizer, onnx_tokenizer, prompts))


def _same_tokens(tokenizer: Any, exported: Any, prompts: Sequence[str]) -> bool:
    """The export's tokenizer encodes the prompts alike and keeps every token's id (it may
    hold more: transformers adds GPT-2's ``<|endoftext|>`` to a GGUF vocabulary without it)."""
    theirs = exported.get_vocab()
    same_ids = all(theirs.get(token) == i for token, i in tokenizer.get_vocab().items())
    return same_ids and all(exported.encode(p) == tokenizer.encode(p) for p in prompts)


def _logits(model: torch.nn.Module, ids: list[list[int]]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(torch.tensor([row])).logits[0] for row in ids]  # each (T, V)


def _compare(
    ours: list[torch.Tensor], theirs: list[torch.Tensor], tokens_match: bool | None
) -> ExportCheck:
    ours_all, theirs_all = torch.cat(ours).float(), torch.cat(theirs).float()  # (N, V)
    if ours_all.shape != theirs_all.shape:
        raise PotstillError(
            f"the export's logits have shape {tuple(theirs_all.shape)}, the model's "
            f"{tuple(ours_all.shape)}: the export does not match the model"
        )
    agree = (ours_all.argmax(-1) == theirs_all.argmax(-1)).float().mean()
    ours_logp, theirs_logp = ours_all.log_softmax(-1), theirs_all.log_softmax(-1)
    kl = (ours_logp.exp() * (ours_logp - theirs_logp)).sum(-1).mean()
    return ExportCheck(
        max_abs_diff=(ours_all - theirs_all).abs().max().item(),
        top1_agreement=agree.item(),
        mean_kl=kl.item(),
        logit_scale=ours_all.abs().max().item(),
        tokens_match=tokens_match,
    )


# ---- loading ----------------------------------------------------------------------------


def _load(folder: str | Path, *, dtype: Any, **kwargs: Any) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` from an HF folder, ``bundled:NAME``, or a PEFT adapter folder
    (merged onto its base)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(str(folder)).expanduser()
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return _load_adapter(path, dtype=dtype, **kwargs)
    location = resolve(str(folder))
    if not Path(location).is_dir():
        raise PotstillError(
            f"export needs a local model folder; {folder} is not one: give the student's "
            "folder (runs/NAME/student), a model folder, or bundled:NAME"
        )
    quantized = quantized_folder(location)
    if quantized is not None:
        raise PotstillError(
            f"{folder} is a torchao-quantized model ({quantized}), which the export formats "
            "cannot hold: export its float model (--to gguf --qtype q8_0 or q4_0 quantizes "
            "for llama.cpp)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PotstillError(f"model {folder} could not be loaded for export ({reason})") from e
    return model.eval(), tokenizer


def _load_adapter(path: Path, *, dtype: Any, **kwargs: Any) -> tuple[torch.nn.Module, Any]:
    from peft import PeftModel
    from transformers import AutoTokenizer

    base_ref = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_ref:
        raise PotstillError(
            f"adapter {path} names no base model (base_model_name_or_path); export the merged "
            "student folder instead"
        )
    base, base_tokenizer = _load(base_ref, dtype=dtype, **kwargs)
    merged = PeftModel.from_pretrained(base, path).merge_and_unload()
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer else base_tokenizer
    return merged.eval(), tokenizer


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise PotstillError(
            f"{out} already exists; choose another output path or pass overwrite=True "
            "(--overwrite) to replace it"
        )
