"""Export as a merged HF folder (safetensors), optionally with the PEFT adapter beside it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from potstill.models.export._load import _load, _refuse_existing
from potstill.util.errors import PotstillError
from potstill.util.io import atomic_dir


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
