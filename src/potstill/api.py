"""The Python API: everything the command line does, as functions that return values.

Nothing here prints unless asked (``verbose=True``, or a handler on the ``potstill``
logger). Overrides are keyword arguments, a double underscore for each dot:
``train__steps=2`` is ``train.steps=2`` on the command line.

>>> recipe = load_recipe(train__steps=3, student__adapter="lora")
>>> recipe.train.steps, recipe.student.adapter
(3, 'lora')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from potstill.cache.reader import TeacherCache
from potstill.config import DataConfig, Recipe
from potstill.config import load_recipe as _load_recipe
from potstill.data import load_data
from potstill.evaluation.lm import evaluate_models
from potstill.evaluation.report import Report, build_report, write_report
from potstill.models.export import (
    ExportCheck,
    check_gguf,
    check_onnx,
    export_gguf,
    export_hf,
    export_onnx,
)
from potstill.models.load import load_causal_lm, quantized_folder
from potstill.models.quantize import QuantizationSpec, quantize_model, save_quantized
from potstill.models.student import check_same_vocab
from potstill.pipeline import RunResult, distill_only, teach_only
from potstill.pipeline import run as _run
from potstill.pipeline.generate import generate_only
from potstill.pipeline.label import label_only
from potstill.synth.generate import GenerationsResult
from potstill.synth.store import LabelsTable
from potstill.util.device import resolve_device
from potstill.util.errors import PotstillError
from potstill.util.log import verbose as _verbose

RecipeLike = str | Path | Mapping[str, Any] | Recipe | None


def quantize(
    model: str,
    out: str | Path,
    *,
    weights: str = "int4",
    activations: str = "none",
    group_size: int | None = None,
    verbose: bool = False,
) -> Path:
    """Quantize a float model after training (torchao; `potstill.models.quantize`) into
    the folder ``out``, which must not exist yet; returns it. It loads like any model."""
    spec = QuantizationSpec(weights, activations, group_size)  # type: ignore[arg-type]
    out = Path(out)
    if out.exists():
        raise PotstillError(f"{out} already exists; choose another --out (nothing was written)")
    quantized = quantized_folder(model)
    if quantized is not None:
        raise PotstillError(
            f"{model} is already quantized ({quantized}); quantize its float model instead"
        )
    with _verbose(verbose):
        loaded, tokenizer = load_causal_lm(model)
        save_quantized(quantize_model(loaded, spec), tokenizer, out, spec)
    return out


def export(
    model: str,
    to: str,
    out: str | Path,
    *,
    qtype: str | None = None,
    keep_adapter: bool = False,
    overwrite: bool = False,
    check: bool = True,
) -> tuple[Path, ExportCheck | None]:
    """Export ``model`` ``to`` ``"hf"``, ``"gguf"`` (``qtype`` f16, q8_0, q4_0; default f16,
    and a potstill-quantized model keeps its own integers) or
    ``"onnx"`` at ``out``; with ``check``, read it back and compare its logits with the
    model's (`potstill.models.export`). Returns the path and the check (None for hf)."""
    if to not in ("hf", "gguf", "onnx"):
        raise PotstillError(f"export --to {to!r}: choose hf, gguf or onnx")
    if to != "gguf" and qtype is not None:
        raise PotstillError(f"--qtype {qtype} is for --to gguf; {to} exports float32")
    if keep_adapter and to != "hf":
        raise PotstillError(f"--keep-adapter is for --to hf; {to} holds merged weights")
    if to == "hf":
        return export_hf(model, out, keep_adapter=keep_adapter, overwrite=overwrite), None
    if to == "gguf":
        path = export_gguf(model, out, qtype=qtype, overwrite=overwrite)
        return path, check_gguf(model, path) if check else None
    path = export_onnx(model, out, overwrite=overwrite)
    return path, check_onnx(model, path) if check else None


def load_recipe(recipe: RecipeLike = None, /, **overrides: Any) -> Recipe:
    """A validated `Recipe` from a YAML path, a mapping, a `Recipe` or the default (None),
    with ``key__sub=value`` overrides."""
    raw_overrides = [_override(key, value) for key, value in overrides.items()]
    return _load_recipe(recipe, raw_overrides)


def run(
    recipe: RecipeLike = None, /, *, resume: bool = False, verbose: bool = False, **overrides: Any
) -> RunResult:
    """The whole pipeline; returns the typed report and the run folder.

    ``potstill.run("recipes/hinton-classic.yaml", train__steps=2).report.models["student"]``
    """
    with _verbose(verbose):
        return _run(load_recipe(recipe, **overrides), resume=resume)


def teach(recipe: RecipeLike = None, /, *, verbose: bool = False, **overrides: Any) -> TeacherCache:
    """Run the teacher once over the training data into the recipe's cache (resumable)."""
    with _verbose(verbose):
        return teach_only(load_recipe(recipe, **overrides))


def distill(
    recipe: RecipeLike = None, /, *, resume: bool = False, verbose: bool = False, **overrides: Any
) -> Path:
    """Train the recipe's student (from its cache when there is one); returns its folder."""
    with _verbose(verbose):
        return distill_only(load_recipe(recipe, **overrides), resume=resume)


def label(recipe: RecipeLike = None, /, *, verbose: bool = False, **overrides: Any) -> LabelsTable:
    """The teacher labels ``task.train``'s texts into ``runs/NAME/labels.parquet``
    (resumable); returns the table: soft labels, label prior, truncated count."""
    with _verbose(verbose):
        return label_only(load_recipe(recipe, **overrides))


def generate(
    recipe: RecipeLike = None, /, *, verbose: bool = False, **overrides: Any
) -> GenerationsResult:
    """The teacher (a local model, or ``openai:MODEL`` behind ``teach.endpoint``) writes
    ``generate.n`` responses to every prompt of ``generate.prompts`` into
    ``runs/NAME/generations.jsonl`` (resumable); returns the counts and token usage."""
    with _verbose(verbose):
        return generate_only(load_recipe(recipe, **overrides))


def evaluate(
    models: Sequence[str | Path] | Mapping[str, str | Path],
    *,
    teacher: str | None = None,
    data: str | None = None,
    out: str | Path | None = None,
    block_size: int = 128,
    max_tokens: int = 16384,
    heldout: float = 0.05,
    batch_size: int = 8,
    generate_tokens: int = 32,
    device: str = "auto",
    verbose: bool = False,
) -> Report:
    """Score models (references, or folders such as `distill` returns) on the held-out
    split of ``data`` (None: the shipped corpus); with ``teacher``, also their agreement
    with it. One model is keyed ``model`` in the report, several ``model1``, ``model2``…,
    or as a mapping names them. Writes the report files to ``out`` when given."""
    if out is not None and (Path(out) / "report.json").exists():
        raise PotstillError(f"{out} already holds a report; choose another out folder")
    refs: dict[str, str] = {"teacher": teacher} if teacher else {}
    if isinstance(models, Mapping):
        refs.update({name: str(ref) for name, ref in models.items()})
    else:  # a folder `distill` returned is a reference too
        refs.update(
            {f"model{i + 1}" if len(models) > 1 else "model": str(m) for i, m in enumerate(models)}
        )
    with _verbose(verbose):
        target = resolve_device(device)
        loaded = {key: load_causal_lm(ref) for key, ref in refs.items()}
        first_tokenizer = next(iter(loaded.values()))[1]
        for _, tokenizer in loaded.values():
            check_same_vocab(first_tokenizer, tokenizer)
        cfg = DataConfig(
            path=data, block_size=block_size, max_heldout_tokens=max_tokens, heldout=heldout
        )
        lm_data = load_data(cfg, first_tokenizer)
        results = evaluate_models(
            refs,
            lm_data,
            teacher_key="teacher" if teacher else None,
            batch_size=batch_size,
            generate_tokens=generate_tokens,
            preloaded={k: m.to(target) for k, (m, _) in loaded.items()},
            device=target,
        )
        report = build_report(
            kind="lm",
            run={"name": Path(out).name if out else "eval", "device": str(target)},
            data={
                "name": lm_data.name,
                "heldout_tokens": lm_data.heldout.num_tokens,
                "split": lm_data.split,
            },
            recipe={},
            models=results,
        )
        if out is not None:
            write_report(Path(out), report)
    return report


def _override(key: str, value: Any) -> str:
    """``train__steps=2`` as the command line's ``train.steps=2`` (value as YAML)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return f"{key.replace('__', '.')}={text}"
