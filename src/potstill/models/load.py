"""Resolve a model reference (hub id, local folder, ``bundled:NAME``) and load it.

``openai:MODEL`` names a model behind an OpenAI-compatible endpoint: it has no weights
here, so it is recognised (`endpoint_model`) and refused by everything that loads one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from potstill.models import bundled
from potstill.util.errors import PotstillError, first_line
from potstill.util.io import sha256_file

BUNDLED_PREFIX = "bundled:"
ENDPOINT_PREFIX = "openai:"


def endpoint_model(ref: str) -> str | None:
    """The served model's name of an ``openai:MODEL`` reference; None for other references.

    >>> endpoint_model("openai:gpt-4o-mini"), endpoint_model("bundled:smollm2-135m-instruct")
    ('gpt-4o-mini', None)
    """
    if not ref.startswith(ENDPOINT_PREFIX):
        return None
    model = ref.removeprefix(ENDPOINT_PREFIX).strip()
    if not model:
        raise PotstillError(
            f"teacher {ref!r} names no model: write openai:MODEL, e.g. openai:gpt-4o-mini"
        )
    return model


def text_config(model: torch.nn.Module) -> Any:
    """The config of ``model``'s language part (a multimodal model's text config)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def resolve(ref: str, log: Callable[[str], None] = lambda _: None) -> str:
    """Return something ``from_pretrained`` accepts: a local folder, or a hub id."""
    if endpoint_model(ref) is not None:
        raise PotstillError(
            f"{ref} is a model behind an OpenAI-compatible endpoint, with no weights here: "
            "only `potstill generate` can use it; give a local model reference for this"
        )
    if ref.startswith(BUNDLED_PREFIX):
        return str(bundled.pull(ref.removeprefix(BUNDLED_PREFIX), log=log))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise PotstillError(
                f"model folder {ref} has no config.json: give an HF model folder "
                "(config.json + weights), a hub id, or bundled:NAME"
            )
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise PotstillError(
            f"model {ref} not found: no such folder; give an HF model folder, a hub id, "
            "or bundled:NAME (`potstill models` lists them)"
        )
    return ref


def load_causal_lm(
    ref: str,
    *,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[torch.nn.Module, Any]:
    """Load ``(model, tokenizer)`` in float32 (bf16 is far slower than fp32 on CPU).

    A folder written by `potstill quantize` (or a quantization-aware run) loads quantized,
    through `potstill.models.quantize.load_quantized`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from potstill.models.quantize import is_quantized, load_quantized

    if is_quantized(Path(ref).expanduser()):
        return load_quantized(Path(ref).expanduser())

    def load(location: str) -> tuple[torch.nn.Module, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch.float32, use_safetensors=True, **kwargs
        )
        return model, tokenizer

    model, tokenizer = _load_pretrained(ref, load, log, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    trim_padding_rows(model, tokenizer, log=log)
    model.eval()
    return model, tokenizer


def tokenizer_ids(tokenizer: Any) -> int:
    """How many token ids ``tokenizer`` can produce: its largest id, plus one."""
    return max(tokenizer.get_vocab().values()) + 1


def trim_padding_rows(
    model: torch.nn.Module, tokenizer: Any, log: Callable[[str], None] = lambda _: None
) -> int:
    """Drop the embedding and output rows past the tokenizer's last id; returns how many.

    Checkpoints pad their vocabulary to a round size for fast matrix shapes (Qwen2.5-0.5B
    has 151,936 rows for 151,665 token ids, Qwen2.5-7B 152,064): rows no text reaches, but
    which hold softmax mass and differ between two models of one tokenizer. Without them,
    a teacher and a student of one tokenizer have the same logits, id by id, whatever
    padding each had, and no model samples an id its tokenizer cannot decode.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    ids = tokenizer_ids(tokenizer)
    if head is None or head.weight.shape[0] <= ids or getattr(model, "_hf_peft_config_loaded", 0):
        return 0
    from transformers.utils import logging as hf_logging

    rows = head.weight.shape[0]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its note on pad_to_multiple_of is about GPU speed
    try:
        model.resize_token_embeddings(ids)
    finally:
        hf_logging.set_verbosity(verbosity)
    log(f"dropped {rows - ids} padding rows past the tokenizer's {ids:,} token ids")
    return rows - ids


def quantized_folder(ref: str) -> str | None:
    """How the model folder ``ref`` is quantized (``"int4 weights in groups of 32, float
    activations"``), or None for a float model or any other reference."""
    from potstill.models.quantize import SPEC_FILE, QuantizationSpec, is_quantized

    path = Path(ref).expanduser()
    if ref.startswith((BUNDLED_PREFIX, ENDPOINT_PREFIX)) or not is_quantized(path):
        return None
    try:
        spec = json.loads((path / SPEC_FILE).read_text())["spec"]
        return QuantizationSpec.from_dict(spec).describe()
    except (OSError, ValueError, KeyError, TypeError, PotstillError):
        return "quantized (unreadable spec)"


def load_sequence_classifier(
    ref: str,
    num_labels: int,
    *,
    label_names: list[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[torch.nn.Module, Any]:
    """Load ``(model, tokenizer)`` as a float32 classifier over ``num_labels`` classes.

    An encoder (``bundled:all-minilm-l6-v2``, a BERT folder, a hub id) gets a freshly
    initialised head; a checkpoint whose head has another size gets a fresh one in its
    place, and a head of the right size is kept, so a trained classifier reloads as itself.
    The model maps ``input_ids`` (B, T) to ``logits`` (B, num_labels).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if num_labels < 1:
        raise PotstillError(f"num_labels must be at least 1, got {num_labels}")
    if label_names is not None and len(label_names) != num_labels:
        raise PotstillError(
            f"{len(label_names)} label names for {num_labels} labels; give one name per label"
        )
    if label_names is not None and len(set(label_names)) != len(label_names):
        raise PotstillError(f"label names repeat ({label_names}); give each label its own name")
    names = label_names if label_names is not None else [f"LABEL_{i}" for i in range(num_labels)]

    def load(location: str) -> tuple[torch.nn.Module, Any]:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            location,
            dtype=torch.float32,
            num_labels=num_labels,
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            ignore_mismatched_sizes=True,
            trust_remote_code=False,
            use_safetensors=True,
        )
        return model, tokenizer

    model, tokenizer = _load_pretrained(ref, load, log)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # Decoder classifiers pool at the last non-pad token, found through this id.
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _load_pretrained(
    ref: str,
    load: Callable[[str], tuple[torch.nn.Module, Any]],
    log: Callable[[str], None],
    *,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Resolve ``ref`` and run ``load`` on it; what fails is one `PotstillError` line."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    location = resolve(ref, log=log)
    check_loadable(location, ref, trust_remote_code=trust_remote_code)
    try:
        return load(location)
    except (OSError, ValueError) as e:
        if Path(location).is_dir():  # a local or bundled folder exists but does not load
            raise PotstillError(f"model {ref} could not be loaded ({first_line(e)})") from e
        raise PotstillError(
            f"model {ref} not found: not a local folder or bundled:NAME, and not in the local "
            "hub cache; pass a local folder, or set HF_HUB_OFFLINE=0 to let potstill download "
            "hub ids"
        ) from e


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_loadable(location: str | Path, ref: str, *, trust_remote_code: bool = False) -> None:
    """Refuse a local model folder whose loading could run code from it: weights only as a
    pickle (``pytorch_model.bin``: unpickling runs code; safetensors cannot), or a config
    whose model needs the folder's own Python code (``auto_map`` on a model type
    transformers does not know) unless ``trust_remote_code``."""
    from transformers import CONFIG_MAPPING

    folder = Path(location)
    if not folder.is_dir():
        return
    names = sorted(p.name for p in folder.iterdir())
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles and not any(n.endswith(".safetensors") for n in names):
        raise PotstillError(
            f"model {ref} holds its weights as a pickle ({pickles[0]}), and loading a pickle "
            "can run code: potstill loads safetensors only; convert it once where you trust "
            "it (from_pretrained, then save_pretrained(folder, safe_serialization=True))"
        )
    if trust_remote_code:
        return
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return  # no readable config: transformers says what is wrong
    if not isinstance(config, dict) or not config.get("auto_map"):
        return
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise PotstillError(
            f"model {ref} needs its own Python code (config.json auto_map, model_type "
            f"{model_type!r}), which potstill runs only when told to (potstill serve "
            "--trust-remote-code); use a model transformers supports natively"
        )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def weights_sha256(ref: str) -> str:
    """sha256 over a model's weight files (names and bytes), to tell teachers apart.

    A hub id not downloaded here hashes as its id alone: there are no files to read.
    """
    location = Path(resolve(ref))
    if not location.is_dir():
        return hashlib.sha256(f"hub:{ref}".encode()).hexdigest()
    digest = hashlib.sha256()
    for path in sorted(p for p in location.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)):
        digest.update(path.name.encode() + b"\x00")
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """sha256 of what maps text to ids: the vocabulary, merges and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256(f"{text}\x00{specials}".encode()).hexdigest()
