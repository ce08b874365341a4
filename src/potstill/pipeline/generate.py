"""The generate stage: the teacher writes ``generate.n`` responses to every prompt of
``generate.prompts`` into ``runs/NAME/generations.jsonl``.

The teacher is the recipe's ``teacher``: a local model reference, decoded in batches by
the KV-cache engine, or ``openai:MODEL``, asked through ``teach.endpoint``. Every check
that can refuse the run (the prompts, the API key's variable, a store made with other
settings, a prompt too long for the teacher) comes before anything in the run folder is
written; a store with the same settings is always continued.
"""

from __future__ import annotations

from pathlib import Path

from potstill.config import Recipe
from potstill.data.texts import SHIPPED, TextSet, read_texts
from potstill.generation import Engine
from potstill.models.load import endpoint_model
from potstill.pipeline.context import RunContext
from potstill.pipeline.run_dir import prepare_run_dir, run_dir_of
from potstill.synth.generate import (
    GenerationsResult,
    Prompt,
    distinct_prompts,
    generation_settings,
    plan_rows,
    write_rows,
)
from potstill.synth.generations import GenerationsStore
from potstill.synth.settings import GenerateConfig
from potstill.synth.writers import EndpointWriter, LocalWriter
from potstill.teachers.endpoint import EndpointClient, api_key_from_env
from potstill.util.errors import PotstillError
from potstill.util.log import log


def read_prompts(cfg: GenerateConfig) -> TextSet:
    """``generate.prompts``' texts; one-line errors that name ``generate``'s keys."""
    if cfg.prompts is None:
        raise PotstillError(
            "generate.prompts is not set; point it at a .jsonl/.csv/.parquet file (the text "
            "under generate.prompt_field) or a .txt file with one prompt per line"
        )
    if not cfg.prompts.startswith(SHIPPED) and not Path(cfg.prompts).expanduser().is_file():
        raise PotstillError(
            f"generate.prompts: {cfg.prompts} is not a file; point it at a .jsonl, .csv, "
            ".parquet or .txt file of prompts"
        )
    try:
        return read_texts(cfg.prompts, cfg.prompt_field, limit=cfg.max_prompts)
    except PotstillError as e:  # read_texts' hints name the labelling keys; these are ours
        message = str(e).replace("task.text_field", "generate.prompt_field")
        raise PotstillError(message.replace("task.train/task.test", "generate.prompts")) from None


def generate_only(recipe: Recipe, ctx: RunContext | None = None) -> GenerationsResult:
    """Generate (or finish generating) the recipe's rows; return what was written.

    ``ctx`` lends a run's already loaded local teacher (and its hash); None loads it.
    """
    cfg = recipe.generate
    texts = read_prompts(cfg)
    prompts, duplicates = distinct_prompts(texts, cfg.system)
    log(
        f"prompts {texts.name}: {len(texts):,} ({duplicates:,} repeat an earlier one), "
        f"{cfg.n} sample(s) each"
    )
    if cfg.temperature == 0 and cfg.n > 1:
        log(f"generate.temperature is 0 (greedy): the {cfg.n} samples of a prompt will agree")
    store = GenerationsStore(run_dir_of(recipe))
    model = endpoint_model(recipe.teacher)
    if model is not None:
        return _from_endpoint(recipe, model, texts, prompts, duplicates, store)
    return _from_local(recipe, ctx, texts, prompts, duplicates, store)


def _from_endpoint(
    recipe: Recipe,
    model: str,
    texts: TextSet,
    prompts: list[Prompt],
    duplicates: int,
    store: GenerationsStore,
) -> GenerationsResult:
    cfg, endpoint = recipe.generate, recipe.teach.endpoint
    key = api_key_from_env(endpoint.api_key_env)
    settings = generation_settings(
        cfg, teacher=recipe.teacher, teacher_sha256=None, prompt_format=None
    )
    store.check(settings)
    plan = plan_rows(store, prompts, cfg.n, cfg.seed)
    prepare_run_dir(recipe, resume=True)
    log(f"teacher {recipe.teacher} at {endpoint.base_url}, {endpoint.concurrency} at a time")
    client = EndpointClient(endpoint, model, key)
    info = {
        "prompts_file": texts.name,
        "endpoint": {
            "base_url": endpoint.base_url,
            "model": model,
            "api_key_env": endpoint.api_key_env,
        },
    }
    try:
        return write_rows(
            plan,
            EndpointWriter(client, cfg),
            store,
            settings,
            shard_rows=cfg.shard_rows,
            duplicates=duplicates,
            info=info,
        )
    finally:
        client.close()


def _from_local(
    recipe: Recipe,
    ctx: RunContext | None,
    texts: TextSet,
    prompts: list[Prompt],
    duplicates: int,
    store: GenerationsStore,
) -> GenerationsResult:
    cfg = recipe.generate
    ctx = ctx or RunContext(recipe, run_dir_of(recipe))
    engine = Engine(ctx.teacher, ctx.tokenizer, max_batch=cfg.batch_size)
    writer = LocalWriter(engine, cfg, chunk_rows=max(cfg.shard_rows, cfg.batch_size))
    settings = generation_settings(
        cfg,
        teacher=recipe.teacher,
        teacher_sha256=ctx.teacher_sha256,
        prompt_format=writer.prompt_format,
    )
    store.check(settings)
    plan = plan_rows(store, prompts, cfg.n, cfg.seed)
    writer.prepare([row.prompt for row in plan.todo])
    prepare_run_dir(recipe, resume=True)
    info = {"prompts_file": texts.name, "plain_prompt": writer.plain}
    with engine:
        return write_rows(
            plan,
            writer,
            store,
            settings,
            shard_rows=cfg.shard_rows,
            duplicates=duplicates,
            info=info,
        )
