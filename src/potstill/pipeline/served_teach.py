"""The teach stage through a server (``teach.endpoint.model``): what such a recipe may ask
for, the cache's source, and the call that fills the cache
(`potstill.cache.endpoint_teach`); and the scorer `potstill label` uses through it
(`potstill.synth.served_labels`).

The recipe's ``teacher`` stays the local reference of the model the server serves: its
tokenizer cuts the blocks (and checks what the server reads), and the student, the
evaluation and the rest of the run use it as any teacher. Only the teacher pass over the
training blocks, the costly part, runs on the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from potstill.cache.endpoint_teach import served_source, teach_through_endpoint
from potstill.cache.reader import TeacherCache
from potstill.config import Recipe
from potstill.models.load import endpoint_model, tokenizer_ids
from potstill.pipeline.context import RunContext
from potstill.synth.served_labels import ServedLabelScorer
from potstill.teachers.endpoint import EndpointClient, api_key_from_env
from potstill.teachers.prompt_logprobs import PromptLogprobs
from potstill.util.distributed import launched_world
from potstill.util.errors import PotstillError
from potstill.util.log import log


def served_model(recipe: Recipe) -> str | None:
    """The name the endpoint serves the teacher under, when the cache is taught there."""
    return recipe.teach.endpoint.model


def check_served_teach(recipe: Recipe) -> None:
    """Refuse, in one line, what a server cannot teach: hidden states or attention maps,
    draws, more alternatives than it gives, another temperature than its own; and a
    teacher that is itself ``openai:MODEL`` or a teacher that runs live."""
    teach, endpoint = recipe.teach, recipe.teach.endpoint
    if endpoint_model(recipe.teacher) is not None:
        raise PotstillError(
            f"teacher {recipe.teacher} has no weights or tokenizer here, and "
            "teach.endpoint.model teaches through a server a local teacher it serves: name "
            "the served model's local reference as teacher (e.g. a hub id or bundled:NAME)"
        )
    if not teach.enabled:
        raise PotstillError(
            "teach.endpoint.model teaches the cache through a server, but teach.enabled is "
            "false (the teacher runs here at every step): set teach.enabled=true, or "
            "teach.endpoint.model=null"
        )
    inside = sorted({t.loss for t in recipe.terms if t.spec.kind != "tokens" and t.weight > 0})
    if inside:
        raise PotstillError(
            f"loss terms {', '.join(inside)} compare the teacher's hidden states or attention "
            "maps, which a server does not give: drop them (e.g. loss: forward_kl and "
            "cross_entropy), or teach here (teach.endpoint.model=null)"
        )
    if teach.samples:
        raise PotstillError(
            f"teach.samples={teach.samples}: a server gives its top log-probabilities, not "
            f"draws; set teach.top_k (at most teach.endpoint.max_logprobs="
            f"{endpoint.max_logprobs}) and teach.samples=0"
        )
    if teach.top_k > endpoint.max_logprobs:
        raise PotstillError(
            f"teach.top_k={teach.top_k} asks the server for more log-probabilities than "
            f"teach.endpoint.max_logprobs={endpoint.max_logprobs}: lower teach.top_k, or "
            "raise both the server's limit (vLLM's --max-logprobs) and max_logprobs"
        )
    if recipe.teach_temperature != 1.0:
        raise PotstillError(
            f"the cache would be taken at temperature {recipe.teach_temperature:g}, but a "
            "server gives log-probabilities at temperature 1: set teach.temperature=1 (KD "
            "terms at another temperature re-temper the top-k cache)"
        )
    if launched_world().distributed:
        raise PotstillError(
            "teaching through a server is one process (the server batches the requests): "
            "run potstill teach without torchrun / accelerate launch"
        )


@contextmanager
def served_label_scorer(recipe: Recipe, tokenizer: Any) -> Iterator[ServedLabelScorer | None]:
    """The scorer that labels through the recipe's server (``teach.endpoint.model``), its
    client closed at the end; None when the teacher labels here."""
    model = served_model(recipe)
    if model is None:
        yield None
        return
    endpoint = recipe.teach.endpoint
    client = EndpointClient(endpoint, model, api_key_from_env(endpoint.api_key_env))
    client.kept = "labels"
    try:
        scorer = PromptLogprobs(
            client, top_k=1, vocab_size=tokenizer_ids(tokenizer), tokenizer=tokenizer
        )
        log(f"labels: scored by {model} at {endpoint.base_url}")
        yield ServedLabelScorer(scorer)
    finally:
        client.close()


def served_cache_source(ctx: RunContext) -> dict[str, Any]:
    """The source a cache taught by the recipe's server records (`served_source`)."""
    model = served_model(ctx.recipe)
    assert model is not None
    return served_source(
        model,
        ctx.tokenizer,
        data_fingerprint=ctx.data.fingerprint,
        block_size=ctx.recipe.data.block_size,
    )


def teach_served(ctx: RunContext, *, source: dict[str, Any], plan: list[int]) -> TeacherCache:
    """Fill (or finish) the recipe's cache from the server's prompt log-probabilities."""
    recipe = ctx.recipe
    endpoint = recipe.teach.endpoint
    model = served_model(recipe)
    assert model is not None
    client = EndpointClient(endpoint, model, api_key_from_env(endpoint.api_key_env))
    client.kept = "shards"
    try:
        scorer = PromptLogprobs(
            client,
            top_k=recipe.teach.top_k,
            vocab_size=tokenizer_ids(ctx.tokenizer),
            tokenizer=ctx.tokenizer,
        )
        log(
            f"teacher pass: {model} at {endpoint.base_url}, its top {recipe.teach.top_k} "
            "log-probabilities of every training block"
        )
        return teach_through_endpoint(
            scorer,
            ctx.data.train,
            directory=recipe.cache_dir,
            source=source,
            settings=recipe.teach,
            plan=plan,
            log=log,
        )
    finally:
        client.close()
