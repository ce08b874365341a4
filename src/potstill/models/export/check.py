"""Each export read back: the same token ids through the HF model and the export, their
logits compared (`ExportCheck`) against the tolerance each format is held to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potstill.models.export._load import _load
from potstill.util.errors import PotstillError

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


def check_gguf(
    folder: str | Path, gguf_file: str | Path, *, prompts: Sequence[str] = PROMPTS
) -> ExportCheck:
    """Load the GGUF with transformers (it dequantizes) and compare logits with the HF model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_file)
    model, tokenizer = _load(folder, dtype=torch.float32, quantized=True)
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

    model, tokenizer = _load(folder, dtype=torch.float32, quantized=True)
    ids = [tokenizer.encode(p) for p in prompts]
    n_ctx = max(256, *(len(row) for row in ids))
    llm = Llama(model_path=str(gguf_file), logits_all=True, n_ctx=n_ctx, verbose=False)
    theirs = [llama_cpp_logits(llm, row) for row in ids]
    matches = all(
        llm.tokenize(p.encode(), add_bos=True, special=False) == row
        for p, row in zip(prompts, ids, strict=True)
    )
    return _compare(_logits(model, ids), theirs, matches)


def llama_cpp_logits(llm: Any, ids: Sequence[int]) -> torch.Tensor:
    """The logits (T, V) float32 a llama.cpp model (``llama_cpp.Llama``, made with
    ``logits_all=True``) gives at every position of ``ids``, evaluated from a fresh context."""
    llm.reset()
    llm.eval(list(ids))
    return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))


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
