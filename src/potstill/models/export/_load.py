"""The model an export starts from (an HF folder, ``bundled:NAME``, or a PEFT adapter folder
merged onto its base), and the guard that keeps an export from replacing an existing output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from potstill.models.load import check_loadable, quantized_folder, resolve
from potstill.util.errors import PotstillError, first_line


def _load(
    folder: str | Path, *, dtype: Any, quantized: bool = False, **kwargs: Any
) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` from an HF folder, ``bundled:NAME``, or a PEFT adapter folder
    (merged onto its base); with ``quantized``, a potstill-quantized folder too (GGUF keeps
    its integers; the other formats refuse it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(str(folder)).expanduser()
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        check_loadable(path, str(folder))
        return _load_adapter(path, dtype=dtype, **kwargs)
    location = resolve(str(folder))
    if not Path(location).is_dir():
        raise PotstillError(
            f"export needs a local model folder; {folder} is not one: give the student's "
            "folder (runs/NAME/student), a model folder, or bundled:NAME"
        )
    check_loadable(location, str(folder))
    how = quantized_folder(location)
    if how is not None and quantized:
        from potstill.models.quantized_io import load_quantized

        return load_quantized(location)
    if how is not None:
        raise PotstillError(
            f"{folder} is a torchao-quantized model ({how}), which this export format "
            "cannot hold: export it --to gguf (which keeps its integers), or export its "
            "float model"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise PotstillError(
            f"model {folder} could not be loaded for export ({first_line(e)})"
        ) from e
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
