"""The ``potstill`` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from potstill.util.errors import PotstillError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Distill a large language model into a small one, and measure what it kept.",
    pretty_exceptions_enable=False,
)

Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Recipe overrides as key.sub=value, e.g. train.steps=100", show_default=False
    ),
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue or finish an existing run folder.")
]


@contextmanager
def _resumable(
    hint: str = "rerun with --resume to continue from the last checkpoint",
) -> Iterator[None]:
    """Ctrl-C in a long job: say how to continue, exit 130, no traceback."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"interrupted: {hint}", file=sys.stderr)
        raise typer.Exit(130) from None


def _split_recipe(args: list[str] | None) -> tuple[str | None, list[str]]:
    """The first argument is a recipe file unless it is a key=value override."""
    args = list(args or [])
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


@app.command()
def run(args: Overrides = None, resume: Resume = False) -> None:
    """The whole pipeline: distil, train a no-KD baseline, evaluate, report.

    With no recipe: the embedded default (bundled SmolLM2-135M teacher, a student made of
    a subset of its layers, the shipped Shakespeare corpus, CPU).

    Usage: potstill run [RECIPE.yaml] [key=value ...]
    """
    from potstill.config import load_recipe
    from potstill.evaluation.report import summary_table
    from potstill.pipeline import run as run_pipeline

    path, overrides = _split_recipe(args)
    recipe = load_recipe(path, overrides)
    with _resumable():
        result = run_pipeline(recipe, resume=resume)
    if result.report is not None:
        print(summary_table(result.report))
        print(f"report: {result.html}")
    else:
        print(f"run: {result.run_dir}")


@app.command()
def teach(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Overrides = None,
) -> None:
    """Run the teacher once over the training data into runs/NAME/cache/ (resumable).

    Keeps, per token, teach.samples draws from the teacher's distribution (the default) or
    its top teach.top_k ids with the mass outside them, and the hidden states the loss's
    layer maps need. Run again, it continues a killed or interrupted teach where it
    stopped (no flag needed).
    """
    from potstill.config import load_recipe
    from potstill.pipeline import teach_only

    cfg = load_recipe(recipe, overrides)
    with _resumable("rerun the same command to continue where it stopped"):
        cache = teach_only(cfg)
    print(f"cache: {cfg.cache_dir} ({cache.manifest.describe()})")


@app.command()
def distill(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Overrides = None,
    resume: Resume = False,
) -> None:
    """Train the student (resumable); writes runs/NAME/student/.

    The teacher's signal comes from the recipe's cache (runs/NAME/cache/, or teach.cache)
    when there is one; otherwise, or with teach.enabled=false, the teacher runs live.
    """
    from potstill.config import load_recipe
    from potstill.pipeline import distill_only

    cfg = load_recipe(recipe, overrides)
    with _resumable():
        out = distill_only(cfg, resume=resume)
    print(f"student: {out}")


@app.command()
def label(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Overrides = None,
) -> None:
    """The teacher labels task.train's texts into runs/NAME/labels.parquet (resumable).

    Each text gets the teacher's distribution over task.labels (every label's full token
    sequence scored). Run again, it continues a killed or interrupted labelling where it
    stopped: texts already labelled are kept (no flag needed).
    """
    from potstill.config import load_recipe
    from potstill.pipeline.label import label_only
    from potstill.synth.store import format_prior

    cfg = load_recipe(recipe, overrides)
    with _resumable("rerun the same command to continue where it stopped"):
        table = label_only(cfg)
    kept = len(table) - table.scored
    print(
        f"labels: {len(table):,} texts labelled ({table.scored:,} now, {kept:,} kept), "
        f"prior {format_prior(table)}, {table.truncated:,} truncated: {table.path}"
    )


@app.command()
def generate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Overrides = None,
) -> None:
    """The teacher writes responses to generate.prompts into runs/NAME/generations.jsonl.

    The teacher is the recipe's local model, or openai:MODEL at teach.endpoint.base_url
    (the API key read from the variable teach.endpoint.api_key_env names). Run again, it
    continues a killed or interrupted run: rows already written are kept (no flag needed).
    """
    from potstill.config import load_recipe
    from potstill.pipeline.generate import generate_only

    cfg = load_recipe(recipe, overrides)
    with _resumable("rerun the same command to continue where it stopped"):
        result = generate_only(cfg)
    tokens = result.usage.get("completion_tokens", 0)
    retries = f", {result.usage['retries']:,} retries" if "retries" in result.usage else ""
    print(
        f"generations: {result.rows:,} rows ({result.generated:,} now, {result.kept:,} kept, "
        f"{result.duplicates:,} duplicate prompts skipped), {tokens:,} completion tokens "
        f"now{retries}: {result.path}"
    )


@app.command(name="eval")
def evaluate(
    model: Annotated[list[str], typer.Option("--model", help="Model reference (repeatable).")],
    data: Annotated[
        str | None, typer.Option("--data", help="Text data; default: the shipped corpus.")
    ] = None,
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher reference, for agreement.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the report.")] = Path("runs/eval"),
    block_size: Annotated[int, typer.Option(help="Tokens per evaluation block.")] = 128,
    max_tokens: Annotated[int, typer.Option(help="Cap on held-out tokens scored.")] = 16384,
    heldout: Annotated[float, typer.Option(help="Held-out fraction of the data scored.")] = 0.05,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
) -> None:
    """Score models on the held-out split of some data and write a report."""
    from potstill.api import evaluate as evaluate_models
    from potstill.evaluation.report import summary_table

    report = evaluate_models(
        model,
        teacher=teacher,
        data=data,
        out=out,
        block_size=block_size,
        max_tokens=max_tokens,
        heldout=heldout,
        device=device,
    )
    print(summary_table(report))
    print(f"report: {out / 'report.html'}")


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="Model: an HF folder, a run's student/ folder, bundled:NAME, a hub id."
        ),
    ],
    host: Annotated[
        str, typer.Option(help="Address to listen on; other than loopback, others can reach it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8000,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Name of an environment variable holding the API key to require."),
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most sequences decoded together.")] = 8,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Most requests waiting; more get HTTP 429.")
    ] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, help="CPU threads for torch (default: torch's); 1 when the CPUs are shared."
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool,
        typer.Option("--trust-remote-code", help="Run code from the model folder (trusted only)."),
    ] = False,
) -> None:
    """An OpenAI-compatible endpoint over MODEL until Ctrl-C.

    /v1/models, /v1/completions and /v1/chat/completions (streaming, logprobs, stop
    strings; echo with a prompt's own log-probabilities, as another run's teach.endpoint
    reads them), on 127.0.0.1 unless --host says otherwise. With --api-key-env NAME,
    requests must send 'Authorization: Bearer $NAME'.
    """
    from potstill.serve import serve as serve_model

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    serve_model(
        model,
        host=host,
        port=port,
        api_key_env=api_key_env,
        max_batch=max_batch,
        max_queue=max_queue,
        device=device,
        trust_remote_code=trust_remote_code,
    )


@app.command()
def quantize(
    model: Annotated[str, typer.Argument(help="Float model reference (a folder, bundled:NAME).")],
    out: Annotated[Path, typer.Option("--out", help="New folder for the quantized model.")],
    weights: Annotated[str, typer.Option(help="int8 or int4 weights.")] = "int4",
    activations: Annotated[
        str, typer.Option(help="none (weight-only) or int8 (dynamic, per token).")
    ] = "none",
    group_size: Annotated[
        int | None,
        typer.Option(help="Input features per scale (default: int4 32, int8 per channel)."),
    ] = None,
) -> None:
    """Quantize a trained model (post-training, torchao) into a new folder.

    The folder loads like any model: `eval`, `serve` and a recipe's teacher read it.
    """
    from potstill.api import quantize as quantize_model
    from potstill.evaluation.size import size_on_disk
    from potstill.models.load import resolve

    folder = quantize_model(
        model, out, weights=weights, activations=activations, group_size=group_size
    )
    before, after = size_on_disk(resolve(model)), size_on_disk(folder)
    share = f"{after / 1e6:.1f} MB, {after / before:.1%} of the float model's {before / 1e6:.1f} MB"
    print(f"quantized: {folder} ({share})")


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="Model folder (runs/NAME/student) or bundled:NAME.")],
    to: Annotated[str, typer.Option("--to", help="hf, gguf or onnx.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (hf, onnx) or .gguf file.")],
    qtype: Annotated[
        str | None,
        typer.Option(
            help="GGUF tensor type: f16 (default), q8_0 or q4_0; a quantized student keeps "
            "its own integers."
        ),
    ] = None,
    keep_adapter: Annotated[
        bool, typer.Option("--keep-adapter", help="hf: keep the LoRA/PiSSA adapter beside.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Read the export back and compare logits.")
    ] = True,
) -> None:
    """Export a model to the formats people run: a merged HF folder, GGUF, ONNX."""
    from potstill.api import export as export_model

    path, result = export_model(
        model, to, out, qtype=qtype, keep_adapter=keep_adapter, overwrite=overwrite, check=check
    )
    print(f"exported: {path}")
    if result is not None:
        print(
            f"check: max |logit difference| {result.max_abs_diff:.3g}, top-1 agreement "
            f"{result.top1_agreement:.1%}, mean KL {result.mean_kl:.3g} (against {model})"
        )


@app.command()
def models() -> None:
    """List the bundled models and whether each is already converted here."""
    from potstill.models.bundled import REGISTRY, converted_path, is_converted

    for name, spec in REGISTRY.items():
        state = f"ready at {converted_path(name)}" if is_converted(name) else "not pulled"
        print(f"bundled:{name:<30} {spec.description}  [{state}]")


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="Bundled model name, e.g. smollm2-135m-instruct.")],
) -> None:
    """Fetch, verify and convert a bundled model once (later loads take seconds)."""
    from potstill.models.bundled import pull as pull_model
    from potstill.util.log import log

    print(pull_model(name.removeprefix("bundled:"), log=log))


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from potstill.util.log import set_verbose

    # Under torchrun / accelerate launch only rank 0 talks (the launcher sets RANK).
    set_verbose(os.environ.get("RANK", "0") in ("", "0"))
    code: int | str | None = 0
    try:
        app()
    except PotstillError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except SystemExit as e:  # typer ends every command this way
        code = e.code
    if int(os.environ.get("WORLD_SIZE") or 1) > 1:
        _leave_launched(code)
    sys.exit(code)


def _leave_launched(code: int | str | None) -> None:
    """End a process a launcher started without the interpreter's teardown
    (`potstill.util.distributed.exit_process`); a message code is printed and exits 1."""
    from potstill.util.distributed import exit_process

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    exit_process(code or 0)
