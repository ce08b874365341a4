"""Teaching through a server (``teach.endpoint.model``): a cache taught by `potstill serve`
on loopback matches the one taught here, a student trains from it, bad answers stop the
teach in one line and keep the shards already written, and what a server cannot teach is
refused before anything is. `potstill label` through the server labels as here."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from potstill.cache import codec
from potstill.cache.store import MANIFEST, read_manifest
from potstill.config import load_recipe
from potstill.data import load_data
from potstill.models.load import load_causal_lm
from potstill.pipeline import distill_only, run, teach_only
from potstill.serve import Engine, create_app
from potstill.synth.store import read_labels
from potstill.util.errors import PotstillError
from tests.conftest import make_llama, make_tokenizer, run_cli, tiny_recipe
from tests.serve.conftest import make_decisive_llama, serving
from tests.synth.test_label import CHAT_TEMPLATE
from tests.teachers.logprobs_server import LogprobsScript, logprobs_server, no_logprobs, one_short

K = 8
BITS = 8
LABEL_TEXTS = ["To sleep", "ay, there's the rub", "No more", "The heart-ache", "To die"]


@pytest.fixture(autouse=True)
def restore_threads():
    """The recipe sets torch's thread count; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny Llama teacher on disk whose distributions have clear margins (no ties)."""
    folder = tmp_path_factory.mktemp("served_teacher")
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(folder)
    make_decisive_llama(len(tokenizer)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served(teacher_dir) -> str:
    """`potstill serve`'s app over the teacher folder, on loopback: its base URL."""
    engine = Engine(*load_causal_lm(str(teacher_dir)), max_batch=4, max_queue=16)
    engine.start()
    try:
        with serving(create_app(engine, "tiny")) as url:
            yield url
    finally:
        engine.close()


def recipe_for(runs: Path, teacher_dir: Path, corpus: Path, name: str, url: str | None, **teach):
    recipe = tiny_recipe(runs, teacher_dir, corpus)
    recipe["name"] = name
    recipe["loss"] = [
        {"loss": "forward_kl", "weight": 0.5, "temperature": 1.0},
        {"loss": "cross_entropy", "weight": 0.5},
    ]
    endpoint = {"model": "tiny", "base_url": url, "api_key_env": None, "max_retries": 1}
    recipe["teach"] = {
        "top_k": K,
        "shard_blocks": 3,
        "batch_size": 2,
        **({"endpoint": endpoint} if url else {}),
        **teach,
    }
    return recipe


def exact_logprobs(teacher_dir: Path, recipe, blocks: list[int]) -> torch.Tensor:
    """``(blocks, L − 1, V)`` float64: the teacher's own next-token distributions."""
    model, tokenizer = load_causal_lm(str(teacher_dir))
    data = load_data(recipe.data, tokenizer)
    ids = data.train.input_ids[torch.tensor(blocks)]
    with torch.no_grad():
        logits = copy.deepcopy(model).double()(input_ids=ids).logits[:, :-1]
    return torch.log_softmax(logits, dim=-1)


def test_a_cache_taught_through_potstill_serve_matches_the_local_one(
    tmp_path, teacher_dir, corpus_file, served
):
    """Tolerance: every served id's log-probability within the codec's quantization error
    (half a step of the 8-bit grid) plus 1e-4 of float noise of the teacher's exact one;
    the same ids as the local cache wherever the k-th and (k+1)-th differ by over 1e-4; the
    tail within that error plus 1e-3 where it holds at least 1e-3 of the mass."""
    runs = tmp_path / "runs"
    over_server = load_recipe(recipe_for(runs, teacher_dir, corpus_file, "served", served))
    here = load_recipe(recipe_for(runs, teacher_dir, corpus_file, "local", None))
    served_cache, local_cache = teach_only(over_server), teach_only(here)

    manifest, local = served_cache.manifest, local_cache.manifest
    assert manifest.teacher == "openai:tiny" and manifest.complete
    assert manifest.plan == local.plan and manifest.vocab_size == local.vocab_size
    assert (manifest.top_k, manifest.samples, manifest.temperature) == (K, 0, 1.0)
    assert manifest.tokenizer_sha256 == local.tokenizer_sha256
    assert len(manifest.shards) == len(local.shards) == 2

    blocks = torch.tensor(manifest.plan)
    exact = exact_logprobs(teacher_dir, over_server, manifest.plan)  # (B, P, V)
    ours, theirs = served_cache.signal(blocks), local_cache.signal(blocks)
    error = codec.max_logprob_error(BITS) + 1e-4
    picked = exact.gather(-1, ours.ids.long())  # the served ids' exact log-probabilities
    assert float((ours.logprobs.double() - picked).abs().max()) <= error
    values = exact.topk(K + 1, dim=-1).values
    clear = (values[..., K - 1] - values[..., K]) > 1e-4
    assert float(clear.double().mean()) > 0.95  # the decisive teacher: ties are rare
    same = (ours.ids.sort(-1).values == theirs.ids.sort(-1).values).all(-1)
    assert bool(same[clear].all())
    tail = torch.log1p(-values[..., :K].exp().sum(-1))
    held = tail.exp() >= 1e-3
    assert float((ours.tail_logprob.double() - tail).abs()[held].max()) <= error + 1e-3
    assert float((ours.logprobs - theirs.logprobs).abs()[clear].max()) <= 2 * error

    # A student trains from it as from any cache, and a second teach finds it complete.
    assert (distill_only(over_server) / "model.safetensors").is_file()
    assert teach_only(over_server).manifest.shards == manifest.shards


@pytest.mark.parametrize(
    ("spoil", "words"),
    [
        (no_logprobs, ["without prompt log-probabilities", "the shards finished so far are kept"]),
        (one_short, ["answered 15 positions for block", "of 16 tokens"]),
        (lambda _: 500, ["failed 2 time(s) in a row", "HTTP 500", "the shards finished so far"]),
    ],
    ids=["no-logprobs", "wrong-length", "http-500"],
)
def test_a_bad_answer_stops_in_one_line_and_keeps_the_shards(
    tmp_path, teacher_dir, corpus_file, capsys, spoil, words
):
    model = load_causal_lm(str(teacher_dir))[0]
    runs = tmp_path / "runs"
    script = LogprobsScript(spoil={3: spoil, 4: spoil})  # the 2nd shard's 1st request (+ retry)
    with logprobs_server(model, script) as url:
        recipe = recipe_for(runs, teacher_dir, corpus_file, "bad", url, batch_size=1)
        recipe["teach"]["endpoint"]["concurrency"] = 1
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        code, _, err = run_cli("teach", str(path), capsys=capsys)
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    for word in words:
        assert word in line, line
    cache = runs / "bad" / "cache"
    kept = read_manifest(cache)
    assert [len(s.blocks) for s in kept.shards] == [3] and not kept.complete
    first = json.loads((cache / MANIFEST).read_text())["shards"][0]

    # Rerun against a good server: only the blocks not taught are asked for.
    again = LogprobsScript()
    with logprobs_server(model, again) as url:
        recipe["teach"]["endpoint"]["base_url"] = url
        finished = teach_only(load_recipe(recipe))
    assert finished.manifest.complete and len(again.bodies) == len(kept.remaining())
    assert json.loads((cache / MANIFEST).read_text())["shards"][0] == first


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"loss": [{"loss": "forward_kl"}, {"loss": "hidden_mse", "layers": {0: 0}}]},
            ["loss terms hidden_mse", "which a server does not give"],
        ),
        ({"teach": {"samples": 64, "top_k": 0}}, ["teach.samples=64", "teach.top_k"]),
        ({"teach": {"top_k": 30}}, ["teach.top_k=30", "teach.endpoint.max_logprobs=20"]),
        ({"teach": {"temperature": 2.0}}, ["temperature 2", "teach.temperature=1"]),
        ({"teach": {"enabled": False}}, ["teach.enabled is false"]),
        ({"teacher": "openai:tiny"}, ["name the served model's local reference as teacher"]),
    ],
    ids=["hidden", "samples", "top-k", "temperature", "live", "openai-teacher"],
)
def test_what_a_server_cannot_teach_is_refused_before_anything_is(
    tmp_path, teacher_dir, corpus_file, change, words
):
    url = "http://127.0.0.1:9/v1"  # never asked: the recipe is refused first
    recipe = recipe_for(tmp_path / "runs", teacher_dir, corpus_file, "no", url)
    for key, value in change.items():
        recipe[key] = {**recipe[key], **value} if key == "teach" else value
    with pytest.raises(PotstillError) as error:
        run(load_recipe(recipe))
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    assert not (tmp_path / "runs" / "no" / "cache").exists()


def test_potstill_label_scores_through_the_server_as_here(tmp_path, capsys):
    """`potstill label` with teach.endpoint.model: the table names the served model and
    holds the labels the local teacher gives (log-likelihoods within 1e-4)."""
    folder = tmp_path / "chat_teacher"
    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    model = make_llama(len(tokenizer), layers=2)
    model.config.max_position_embeddings = 512  # the tiny tokenizer's prompt is long
    model.save_pretrained(folder)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in LABEL_TEXTS))
    recipe = {
        "runs_dir": str(tmp_path / "runs"),
        "teacher": str(folder),
        "device": "cpu",
        "train": {"threads": 1},
        "task": {
            "kind": "classify",
            "labels": [{"name": "sleep", "description": "about sleeping"}, "death"],
            "train": str(texts),
            "batch_size": 2,
        },
    }
    engine = Engine(*load_causal_lm(str(folder)), max_batch=4, max_queue=16)
    engine.start()
    try:
        with serving(create_app(engine, "tiny")) as url:
            endpoint = {"model": "tiny", "base_url": url, "api_key_env": None}
            served = {**recipe, "name": "served", "teach": {"endpoint": endpoint}}
            path = tmp_path / "served.yaml"
            path.write_text(yaml.safe_dump(served))
            code, out, err = run_cli("label", str(path), capsys=capsys)
    finally:
        engine.close()
    assert code == 0, err
    assert "labels: scored by tiny at http://127.0.0.1" in out + err
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump({**recipe, "name": "local"}))
    assert run_cli("label", str(path), capsys=capsys)[0] == 0
    served_table = read_labels(tmp_path / "runs" / "served" / "labels.parquet")
    local_table = read_labels(tmp_path / "runs" / "local" / "labels.parquet")
    assert served_table.teacher == "openai:tiny" and local_table.teacher == str(folder)
    np.testing.assert_allclose(served_table.logprobs, local_table.logprobs, atol=1e-4)
    np.testing.assert_allclose(served_table.prior, local_table.prior, atol=1e-5)
