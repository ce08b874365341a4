"""Export as ONNX for onnxruntime: ``input_ids (B, T) int64 -> logits (B, T, V) float32``,
without a KV cache, with the tokenizer files beside it."""

from __future__ import annotations

from pathlib import Path

import torch

from potstill.models.export._load import _load, _refuse_existing
from potstill.util.io import atomic_dir


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
