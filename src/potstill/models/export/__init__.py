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

Modules: `_load` (the source model, and the guard on existing outputs), one per format
(`hf`, `gguf`, `onnx`), and `check` (each export read back against the HF model).
"""

from potstill.models.export.check import (
    GGUF_TOLERANCES,
    LLAMA_CPP_TOLERANCES,
    ONNX_TOLERANCE,
    PROMPTS,
    ExportCheck,
    Tolerance,
    check_gguf,
    check_llama_cpp,
    check_onnx,
    llama_cpp_logits,
)
from potstill.models.export.gguf import GGUF_QTYPES, export_gguf, rope_permute
from potstill.models.export.hf import export_hf
from potstill.models.export.onnx import LogitsOnly, export_onnx

__all__ = [
    "GGUF_QTYPES",
    "GGUF_TOLERANCES",
    "LLAMA_CPP_TOLERANCES",
    "ONNX_TOLERANCE",
    "PROMPTS",
    "ExportCheck",
    "LogitsOnly",
    "Tolerance",
    "check_gguf",
    "check_llama_cpp",
    "check_onnx",
    "export_gguf",
    "export_hf",
    "export_onnx",
    "llama_cpp_logits",
    "rope_permute",
]
