"""Build the student: any model reference, a layer subset of the teacher, or a fresh config.

Then wrap it for training as a full fine-tune or as LoRA / PiSSA adapters (PEFT).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from potstill.losses.registry import cross_tokenizer_problem
from potstill.models.load import load_causal_lm, quantized_folder
from potstill.models.quantize import QuantizationSpec
from potstill.models.settings import StudentConfig
from potstill.util.errors import PotstillError
from potstill.util.io import atomic_dir


def build_student(
    cfg: StudentConfig,
    teacher: torch.nn.Module,
    teacher_tokenizer: Any,
    *,
    seed: int = 0,
    loss_names: Sequence[str] | None = None,
) -> tuple[torch.nn.Module, Any]:
    """Return ``(student, tokenizer)``, the student in float32, not yet adapter-wrapped.

    A ``student.model`` of another tokenizer than the teacher's is taken when
    ``loss_names`` (the active terms) all work across tokenizers (`check_same_vocab`).
    """
    if cfg.source == "model":
        assert cfg.model is not None
        quantized = quantized_folder(cfg.model)
        if quantized is not None:
            raise PotstillError(
                f"student.model {cfg.model} is a quantized model ({quantized}): integer "
                "weights do not train; distil its float model and quantize after (potstill "
                "quantize), or train quantization-aware (student.qat)"
            )
        student, tokenizer = load_student_model(cfg)
        check_same_vocab(teacher_tokenizer, tokenizer, teacher, student, loss_names=loss_names)
        return student, tokenizer
    if cfg.source == "fresh":
        assert cfg.fresh is not None
        return fresh_student(teacher, cfg.fresh, seed=seed), teacher_tokenizer
    assert cfg.from_teacher is not None
    return layer_subset(teacher, cfg.from_teacher.layers), teacher_tokenizer


def load_student_model(cfg: StudentConfig) -> tuple[torch.nn.Module, Any]:
    """``student.model`` loaded, cut to ``student.layers`` when given; its tokenizer."""
    assert cfg.model is not None
    model, tokenizer = load_causal_lm(cfg.model)
    if cfg.layers is not None:
        model = layer_subset(model, cfg.layers, key="student.layers")
    return model, tokenizer


def student_qat(cfg: StudentConfig) -> QuantizationSpec | None:
    """The quantization a ``student.qat`` student trains towards; None for a float one."""
    return cfg.qat


def layer_subset(
    teacher: torch.nn.Module, layers: list[int], *, key: str = "student.from_teacher.layers"
) -> torch.nn.Module:
    """A copy of ``teacher`` that keeps only the decoder ``layers`` (weights copied).

    Embeddings, final norm and output head are copied too. Works for decoder models that
    keep their blocks in ``model.layers`` (Llama, Mistral, Qwen2, Gemma, …).
    """
    blocks = _decoder_layers(teacher)
    n = len(blocks)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise PotstillError(f"{key}: {bad} out of range; the model has layers 0..{n - 1}")
    if len(set(layers)) != len(layers) or sorted(layers) != list(layers):
        raise PotstillError(f"{key} {layers} must be strictly increasing with no repeats")
    # Deep-copy everything except the blocks we drop, so no teacher tensor is shared.
    memo = {id(block): None for block in blocks}
    student = copy.deepcopy(teacher, memo)
    # The kept blocks share the student's config (as the teacher's blocks share the
    # teacher's), so a change to it (e.g. the attention kernel) reaches them.
    keep = torch.nn.ModuleList(
        copy.deepcopy(blocks[i], {id(teacher.config): student.config}) for i in layers
    )
    _set_decoder_layers(student, keep)
    for new_idx, block in enumerate(keep):
        attn = getattr(block, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx  # the KV cache is indexed by position in the stack
    config = student.config
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    if student.config.tie_word_embeddings:
        student.tie_weights()
    return student


def fresh_student(teacher: torch.nn.Module, fresh: Any, *, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised model of the teacher's architecture with the given shape."""
    config = copy.deepcopy(teacher.config)
    if fresh.hidden_size % fresh.num_heads:
        raise PotstillError(
            f"student.fresh: hidden_size {fresh.hidden_size} must be divisible by "
            f"num_heads {fresh.num_heads}"
        )
    kv_heads = fresh.num_kv_heads or fresh.num_heads
    if fresh.num_heads % kv_heads:
        raise PotstillError(
            f"student.fresh: num_heads {fresh.num_heads} must be a multiple of "
            f"num_kv_heads {kv_heads}"
        )
    config.num_hidden_layers = fresh.num_layers
    config.hidden_size = fresh.hidden_size
    config.num_attention_heads = fresh.num_heads
    config.num_key_value_heads = kv_heads
    config.head_dim = fresh.hidden_size // fresh.num_heads
    config.intermediate_size = fresh.intermediate_size or 4 * fresh.hidden_size
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[: fresh.num_layers]
    torch.manual_seed(seed)
    model = type(teacher)(config)
    return model.to(torch.float32)


def same_tokenizer(teacher_tokenizer: Any, student_tokenizer: Any) -> bool:
    """Whether two tokenizers map the same strings to the same ids."""
    return teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()


def check_same_vocab(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    teacher: Any = None,
    student: Any = None,
    *,
    loss_names: Sequence[str] | None = None,
) -> None:
    """Refuse, clearly, a teacher and student whose vocabularies differ when a loss term
    compares token ids: every term but ``shared_kl``, ``uld`` and ``cross_entropy`` does
    (``loss_names`` None: assume one does). With the same tokenizer the output sizes must
    agree too."""
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab != s_vocab:
        problem = cross_tokenizer_problem(list(loss_names)) if loss_names is not None else ""
        if problem is None:
            return  # the terms need no shared ids: the output sizes may differ too
        differing = len(set(t_vocab.items()) ^ set(s_vocab.items()))
        raise PotstillError(
            f"teacher and student vocabularies differ (teacher {len(t_vocab)} tokens, student "
            f"{len(s_vocab)}, {differing} entries differ), and "
            f"{problem or 'logit terms compare token ids one to one'}: use a loss that "
            "works across tokenizers (loss: [{loss: shared_kl}, {loss: cross_entropy}], or "
            "{loss: uld} in shared_kl's place), choose a student with the teacher's "
            "tokenizer (student.from_teacher / student.fresh), or learn from the teacher's "
            "text alone (potstill generate, cross_entropy only)"
        )
    if teacher is not None and student is not None:
        t_out = teacher.get_output_embeddings().weight.shape[0]
        s_out = student.get_output_embeddings().weight.shape[0]
        if t_out != s_out:
            raise PotstillError(
                f"teacher and student output sizes differ ({t_out} vs {s_out} logits) although "
                "the tokenizers match; resize the student's embeddings to the teacher's"
            )


def wrap_adapter(student: torch.nn.Module, cfg: StudentConfig) -> torch.nn.Module:
    """Full fine-tune: the model as is. LoRA / PiSSA: a PEFT model, only adapters trainable.

    PiSSA (Meng et al. 2024) initialises the adapters from the principal singular vectors of
    each weight, so training starts from the full model and moves its main directions.
    """
    if cfg.adapter == "full":
        return student
    from peft import LoraConfig, get_peft_model

    init: bool | str = True if cfg.adapter == "lora" else "pissa_niter_4"
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        init_lora_weights=init,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(student, lora)


def save_student(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    """Write an HF folder that loads with ``from_pretrained``, atomically.

    Adapter students are saved merged (a plain checkpoint) and their adapters beside it
    in ``adapter/``.
    """
    with atomic_dir(folder) as tmp:
        if hasattr(model, "merge_and_unload"):
            model.save_pretrained(tmp / "adapter")
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise PotstillError(
            f"student.from_teacher needs a decoder with model.layers; {type(model).__name__} "
            "has none: give the student as student.model or student.fresh"
        )
    return layers


def _set_decoder_layers(model: torch.nn.Module, layers: torch.nn.ModuleList) -> None:
    model.model.layers = layers
