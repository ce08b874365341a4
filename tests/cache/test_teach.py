"""`potstill teach` and the cache on disk, on a tiny teacher built in-process."""

from __future__ import annotations

import json

import pytest
import torch

from potstill.cache import codec
from potstill.cache.reader import TeacherCache
from potstill.cache.store import MANIFEST, CacheWriter
from potstill.cache.teach import cache_source, plan_blocks
from potstill.cache.teach import teach as teach_cache
from potstill.config import Recipe, TrainConfig
from potstill.data import load_data
from potstill.data.order import scheduled_blocks as order_blocks
from potstill.losses import top_k_signal
from potstill.models.load import load_causal_lm
from potstill.models.student import layer_subset
from potstill.signals import SignalRequest
from potstill.tasks.causal_lm import CausalLM
from potstill.teachers import LiveTeacher
from potstill.train.loop import train
from potstill.util.errors import PotstillError


def scheduled_blocks(n, cfg):
    return order_blocks(
        n, micro_batches=cfg.steps * cfg.grad_accum, batch_size=cfg.batch_size, seed=cfg.seed
    )


def source_of(recipe, tokenizer, data):
    return cache_source(
        recipe.teacher,
        tokenizer,
        data_fingerprint=data.fingerprint,
        block_size=recipe.data.block_size,
    )


def teach(recipe, teacher, tokenizer, data, *, directory, hidden_layers=()):
    plan = plan_blocks(
        scheduled_blocks(len(data.train), recipe.train), len(data.train), recipe.teach.blocks
    )
    return teach_cache(
        LiveTeacher(teacher),
        data.train,
        directory=directory,
        source=source_of(recipe, tokenizer, data),
        settings=recipe.teach,
        temperature=recipe.teach_temperature,
        plan=plan,
        hidden_layers=hidden_layers,
    )


@pytest.fixture(scope="module")
def setup(tiny_teacher_dir, corpus_file):
    recipe = Recipe(
        teacher=str(tiny_teacher_dir),
        data={"path": str(corpus_file), "block_size": 16, "heldout": 0.1},
        loss=[{"loss": "forward_kl", "temperature": 2.0}, {"loss": "cross_entropy"}],
        train={"steps": 5, "batch_size": 2},
        teach={"top_k": 8, "shard_blocks": 3, "batch_size": 2},
    )
    teacher, tokenizer = load_causal_lm(recipe.teacher)
    data = load_data(recipe.data, tokenizer)
    return recipe, teacher, tokenizer, data


def kill_teach_after(
    shards, recipe, teacher, tokenizer, data, directory, monkeypatch, hidden_layers=()
):
    """Run `teach` into ``directory`` and kill it once it has written ``shards`` shards."""
    real_write = CacheWriter.write_shard
    written = []

    def killed(self, *args, **kwargs):
        if len(written) == shards:
            raise KeyboardInterrupt
        written.append(1)
        return real_write(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(CacheWriter, "write_shard", killed)
        with pytest.raises(KeyboardInterrupt):
            teach(
                recipe, teacher, tokenizer, data, directory=directory, hidden_layers=hidden_layers
            )


def hidden_files(directory):
    """The basis file's bytes and the hidden-state shards' bytes, whatever their names."""
    basis = directory / "hidden-basis.safetensors"
    shards = sorted(p.read_bytes() for p in directory.glob("hidden-0*.bin"))
    return basis.read_bytes(), shards


def shard_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.glob("shard-*.bin"))}


def test_cache_round_trip_and_manifest(setup, tmp_path):
    recipe, teacher, tokenizer, data = setup
    cache = teach(recipe, teacher, tokenizer, data, directory=tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    plan = scheduled_blocks(len(data.train), recipe.train)
    assert manifest["plan"] == plan and manifest["complete"]
    assert manifest["tokens"] == len(plan) * 15
    source, top_k = manifest["source"], manifest["fields"]["top_k"]
    assert top_k["k"] == 8 and top_k["temperature"] == 2.0  # the KD term's
    assert source["block_size"] == 16 and source["data_fingerprint"] == data.fingerprint
    assert source["teacher"] == recipe.teacher and len(source["teacher_sha256"]) == 64
    assert len(manifest["shards"]) == -(-len(plan) // 3)
    assert top_k["reconstruction_kl_mean"] >= 0 and 0 < top_k["tail_mass_mean"] < 1

    index = torch.tensor(plan[:3])
    with torch.no_grad():
        logits = teacher(input_ids=data.train.input_ids[index]).logits[:, :-1]
    expected = top_k_signal(logits, 8, temperature=2.0)
    got = cache.signal(index)
    assert got.temperature == 2.0
    bound = codec.max_logprob_error(recipe.teach.bits)
    for row in range(3):
        for pos in range(15):
            want = _entries(expected, row, pos)
            have = _entries(got, row, pos)
            assert have.keys() == want.keys()  # ids exact, as a set
            assert max(abs(have[i] - want[i]) for i in want) <= bound
    torch.testing.assert_close(got.tail_logprob, expected.tail_logprob, atol=bound, rtol=0)


def _entries(signal, row, pos):
    """One token's ``{id: logprob}``."""
    ids, logprobs = signal.ids[row, pos].tolist(), signal.logprobs[row, pos].tolist()
    return dict(zip(ids, logprobs, strict=True))


def test_interrupted_teach_resumes_to_the_same_cache(setup, tmp_path, monkeypatch):
    recipe, teacher, tokenizer, data = setup
    teach(recipe, teacher, tokenizer, data, directory=tmp_path / "straight")

    kill_teach_after(2, recipe, teacher, tokenizer, data, tmp_path / "killed", monkeypatch)
    partial = json.loads((tmp_path / "killed" / MANIFEST).read_text())
    assert len(partial["shards"]) == 2 and not partial["complete"]
    with pytest.raises(PotstillError, match="incomplete"):
        TeacherCache.load(tmp_path / "killed", source_of(recipe, tokenizer, data))
    teach(recipe, teacher, tokenizer, data, directory=tmp_path / "killed")

    assert shard_bytes(tmp_path / "killed") == shard_bytes(tmp_path / "straight")
    same = ("plan", "shards", "tokens", "bytes", "complete")
    straight = json.loads((tmp_path / "straight" / MANIFEST).read_text())
    resumed = json.loads((tmp_path / "killed" / MANIFEST).read_text())
    assert {k: resumed[k] for k in same} == {k: straight[k] for k in same}


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda data: data[:-5], "truncated"),
        (lambda data: data[:40] + bytes([data[40] ^ 0xFF]) + data[41:], "corrupt"),
        (None, "missing"),
    ],
)
def test_a_damaged_shard_is_refused_then_taught_again(setup, tmp_path, damage, words):
    recipe, teacher, tokenizer, data = setup
    teach(recipe, teacher, tokenizer, data, directory=tmp_path)
    before = shard_bytes(tmp_path)
    shard = tmp_path / "shard-00001.bin"
    if damage is None:
        shard.unlink()
    else:
        shard.write_bytes(damage(shard.read_bytes()))
    with pytest.raises(PotstillError, match=f"shard-00001.bin is {words}") as error:
        TeacherCache.load(tmp_path, source_of(recipe, tokenizer, data))
    assert "\n" not in str(error.value) and "potstill teach" in str(error.value)
    teach(recipe, teacher, tokenizer, data, directory=tmp_path)  # repairs it
    after = shard_bytes(tmp_path)
    assert sorted(after.values()) == sorted(before.values())


def test_a_cache_from_another_source_is_refused(setup, tmp_path, tiny_tokenizer):
    recipe, teacher, tokenizer, data = setup
    teach(recipe, teacher, tokenizer, data, directory=tmp_path)
    source = source_of(recipe, tokenizer, data)
    for field, words in [
        ("teacher_sha256", "teacher \\(weights\\)"),
        ("tokenizer_sha256", "tokenizer"),
        ("data_fingerprint", "dataset"),
        ("block_size", "block size"),
    ]:
        other = {**source, field: "0" * 64 if field != "block_size" else 32}
        with pytest.raises(PotstillError, match=f"another {words}"):
            TeacherCache.load(tmp_path, other)
    # teach itself refuses to extend a cache taken with other settings
    sharper = Recipe.model_validate({**recipe.model_dump(), "teach": {"top_k": 4}})
    with pytest.raises(PotstillError, match=r"another teach\.top_k"):
        teach(sharper, teacher, tokenizer, data, directory=tmp_path)


def test_training_needs_the_blocks_the_cache_holds(setup, tmp_path):
    recipe, teacher, tokenizer, data = setup
    cache = teach(recipe, teacher, tokenizer, data, directory=tmp_path)
    longer = TrainConfig(steps=50, batch_size=2)
    with pytest.raises(PotstillError, match=r"teach\.blocks=all"):
        cache.check_covers(scheduled_blocks(len(data.train), longer))


def test_plan_blocks():
    def plan(blocks):
        recipe = Recipe(train={"steps": 2, "batch_size": 3}, teach={"blocks": blocks})
        return plan_blocks(scheduled_blocks(20, recipe.train), 20, recipe.teach.blocks)

    schedule = plan("schedule")
    assert len(schedule) == 6 and len(set(schedule)) == 6
    every = plan("all")
    assert every[:6] == schedule and sorted(every) == list(range(20))
    assert plan(8) == every[:8]


def test_training_from_a_full_cache_matches_the_live_teacher(setup, tmp_path, optimizer_grads):
    """k = V and 16-bit log-probabilities: a cache-fed step takes the live step's gradient."""
    recipe, teacher, tokenizer, data = setup
    vocab = teacher.get_output_embeddings().weight.shape[0]
    full = Recipe.model_validate(
        {**recipe.model_dump(), "teach": {"top_k": vocab, "bits": 16}, "train": {"steps": 1}}
    )
    cache = teach(full, teacher, tokenizer, data, directory=tmp_path / "cache")
    grads = optimizer_grads
    for name, source in (("cache", cache), ("live", LiveTeacher(teacher))):
        train(
            layer_subset(teacher, [0, 3]),
            data.train,
            CausalLM(full.terms),
            full.train,
            teacher=source,
            name=name,
            checkpoint_dir=tmp_path / name,
            metrics_path=tmp_path / "metrics.jsonl",
        )
    for from_cache, live in zip(*grads, strict=True):
        torch.testing.assert_close(from_cache, live, rtol=1e-2, atol=1e-4)


def test_a_cache_of_every_block_serves_a_shorter_schedule(setup, tmp_path):
    recipe, teacher, tokenizer, data = setup
    every = Recipe.model_validate({**recipe.model_dump(), "teach": {"blocks": "all", "top_k": 8}})
    teach(every, teacher, tokenizer, data, directory=tmp_path)
    before = shard_bytes(tmp_path)
    cache = teach(recipe, teacher, tokenizer, data, directory=tmp_path)  # nothing to teach
    assert shard_bytes(tmp_path) == before
    cache.check_covers(scheduled_blocks(len(data.train), recipe.train))


def _sampled(recipe, **teach):
    """The recipe with a sampled (hybrid) cache; forward KL at the cache's temperature."""
    return recipe.model_copy(
        update={
            "teach": recipe.teach.model_copy(update={"top_k": 2, "samples": 6, **teach}),
            "loss": [
                recipe.loss[0].model_copy(update={"temperature": 1.0}),
                recipe.loss[1],
            ],
        }
    )


def test_a_sampled_cache_holds_an_unbiased_estimate_and_resumes_to_the_same_draws(
    setup, tmp_path, monkeypatch
):
    recipe, teacher, tokenizer, data = setup
    sampled = _sampled(recipe)
    cache = teach(sampled, teacher, tokenizer, data, directory=tmp_path / "straight")
    manifest = json.loads((tmp_path / "straight" / MANIFEST).read_text())
    top_k = manifest["fields"]["top_k"]
    assert (top_k["k"], top_k["samples"], top_k["seed"]) == (2, 6, 0)
    assert top_k["reconstruction_kl_mean"] is None  # infinite for an estimate: not shown
    plan = manifest["plan"]
    index = torch.tensor(plan[:2])
    got = cache.signal(index)
    assert got.ids.shape == (2, 15, 8) and torch.isneginf(got.tail_logprob).all()
    for row in got.ids.reshape(-1, 8):
        assert len(set(row.tolist())) == 8
    # The teacher's top 2 ids are kept with their own probabilities (up to the codec's
    # rounding); the estimate sums to 1 up to that rounding of each slot.
    with torch.no_grad():
        logits = teacher(input_ids=data.train.input_ids[index]).logits[:, :-1]
    top = top_k_signal(logits, 2)
    bound = codec.max_logprob_error(8)
    for row in range(2):
        for pos in range(15):
            have = _entries(got, row, pos)
            for i, logprob in _entries(top, row, pos).items():
                assert abs(have[i] - logprob) <= bound
    total = got.logprobs.exp().sum(-1)
    assert ((total - 1).abs() < 8 * bound).all()

    # A killed teach run draws, on its rerun, exactly what a straight run drew.
    kill_teach_after(1, sampled, teacher, tokenizer, data, tmp_path / "killed", monkeypatch)
    teach(sampled, teacher, tokenizer, data, directory=tmp_path / "killed")
    assert shard_bytes(tmp_path / "killed") == shard_bytes(tmp_path / "straight")
    # Another seed draws other ids; it cannot extend this cache.
    other = teach(_sampled(recipe, seed=1), teacher, tokenizer, data, directory=tmp_path / "other")
    assert not torch.equal(other.signal(index).ids, got.ids)
    with pytest.raises(PotstillError, match=r"teach\.seed"):
        teach(_sampled(recipe, seed=1), teacher, tokenizer, data, directory=tmp_path / "straight")


def test_a_student_trains_from_a_sampled_cache(setup, tmp_path):
    recipe, teacher, tokenizer, data = setup
    sampled = _sampled(recipe, top_k=0, samples=8)
    cache = teach(sampled, teacher, tokenizer, data, directory=tmp_path / "cache")
    student = layer_subset(teacher, [0, 2])
    result = train(
        student,
        data.train,
        CausalLM(sampled.terms),
        sampled.train,
        teacher=cache,
        name="student",
        checkpoint_dir=tmp_path / "ckpt",
        metrics_path=tmp_path / "metrics.jsonl",
    )
    assert result.steps == 5 and torch.isfinite(torch.tensor(result.final_loss))


def test_a_sampled_cache_refuses_terms_it_would_bias():
    with pytest.raises(ValueError, match="unbiased estimate for forward_kl only, not jsd"):
        Recipe(teach={"samples": 8}, loss=[{"loss": "jsd"}])
    with pytest.raises(ValueError, match="cannot be re-tempered"):
        Recipe(teach={"samples": 8, "temperature": 2.0}, loss=[{"loss": "forward_kl"}])
    with pytest.raises(ValueError, match="both 0"):
        Recipe(teach={"samples": 0, "top_k": 0})
    # A live teacher (no cache) takes any term.
    Recipe(teach={"samples": 8, "enabled": False}, loss=[{"loss": "jsd"}])


def test_hidden_states_are_kept_in_float16_and_resume_like_the_rest(setup, tmp_path, monkeypatch):
    recipe, teacher, tokenizer, data = setup
    recipe = recipe.model_copy(  # exact: the default codes them at relative error 0.04
        update={"teach": recipe.teach.model_copy(update={"hidden_error": 0.0})}
    )
    layers = (1, 3)
    cache = teach(recipe, teacher, tokenizer, data, directory=tmp_path / "a", hidden_layers=layers)
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    hidden = manifest["fields"]["hidden"]
    assert hidden["layers"] == [1, 3] and hidden["width"] == teacher.config.hidden_size
    assert hidden["bytes_per_token"] == 2 * 2 * teacher.config.hidden_size
    index = torch.tensor(manifest["plan"][:3])
    batch = data.train.batch(index)
    with torch.no_grad():
        want = teacher(input_ids=batch.input_ids, output_hidden_states=True).hidden_states
    got = cache.outputs(batch, SignalRequest(distributions=False, hidden_layers=(3,)))
    assert got.distributions is None and set(got.hidden_states) == {3}
    torch.testing.assert_close(
        got.hidden_states[3], want[3][:, :-1], rtol=1e-3, atol=1e-3
    )  # float16: 11 bits of mantissa
    with pytest.raises(PotstillError, match=r"keeps the hidden states of layers \[1, 3\]"):
        cache.outputs(batch, SignalRequest(hidden_layers=(2,)))
    with pytest.raises(PotstillError, match="no attention maps"):
        cache.outputs(batch, SignalRequest(attention_layers=(0,)))
    # Killed after one shard, then rerun: the same bytes as the straight run.
    kill_teach_after(
        1, recipe, teacher, tokenizer, data, tmp_path / "b", monkeypatch, hidden_layers=layers
    )
    teach(recipe, teacher, tokenizer, data, directory=tmp_path / "b", hidden_layers=layers)
    for name in sorted(p.name for p in (tmp_path / "a").glob("hidden-*.bin")):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # A cache that keeps other layers is not extended with these: teach it anew.
    with pytest.raises(PotstillError, match="hidden layers kept"):
        teach(recipe, teacher, tokenizer, data, directory=tmp_path / "a", hidden_layers=(2,))


def test_block_entropy_is_the_cached_distributions_entropy(setup, tmp_path):
    """Top-k ids plus the tail spread evenly over the other ids, against float64."""
    recipe, teacher, tokenizer, data = setup
    cache = teach(recipe, teacher, tokenizer, data, directory=tmp_path)
    blocks = cache.manifest.plan[:2]
    signal = cache.signal(torch.tensor(blocks))
    vocab = cache.manifest.vocab_size
    for row, block in enumerate(blocks):
        want = []
        for pos in range(signal.ids.shape[1]):
            p = signal.logprobs[row, pos].double().exp()
            tail = signal.tail_logprob[row, pos].double().exp()
            spread = tail / (vocab - len(p))
            dense = torch.cat([p, spread.repeat(vocab - len(p))])
            want.append(float(-(dense * dense.log()).sum()))
        got = cache.block_entropy([block])
        assert got.shape == (1,) and got.dtype == torch.float32
        assert got.item() == pytest.approx(sum(want) / len(want), rel=1e-5)


def test_compact_hidden_states_meet_their_error_and_resume_to_the_same_bytes(
    setup, tmp_path, monkeypatch
):
    recipe, teacher, tokenizer, data = setup
    recipe = recipe.model_copy(
        update={"teach": recipe.teach.model_copy(update={"hidden_error": 0.05})}
    )
    layers = (1, 3)
    directory = tmp_path / "a"
    cache = teach(recipe, teacher, tokenizer, data, directory=directory, hidden_layers=layers)
    manifest = json.loads((directory / MANIFEST).read_text())
    hidden = manifest["fields"]["hidden"]
    assert hidden["codec"] == "ptkh" and hidden["error"] == 0.05
    float16 = 2 * len(layers) * teacher.config.hidden_size
    assert hidden["bytes_per_token"] < float16  # the basis included, on a 200-token cache
    shards = [s["fields"]["hidden"] for s in manifest["shards"]]
    assert {s["basis"]["file"] for s in shards} == {"hidden-basis.safetensors"}
    # The error each shard records is the error of what the cache gives back.
    plan = manifest["plan"]
    index = torch.tensor(plan)
    with torch.no_grad():
        want = teacher(
            input_ids=data.train.batch(index).input_ids, output_hidden_states=True
        ).hidden_states
    got = cache.outputs(data.train.batch(index), SignalRequest(hidden_layers=layers))
    errors = [
        (
            ((got.hidden_states[layer] - want[layer][:, :-1]) ** 2).sum(-1)
            / (want[layer][:, :-1] ** 2).sum(-1)
        ).mean()
        for layer in layers
    ]
    measured = float(torch.stack(errors).mean())
    assert measured == pytest.approx(hidden["error_mean"], rel=0.02)  # float16 rounding
    assert shards[0]["error"] == pytest.approx(0.05, rel=0.15)  # the shard it was fitted on
    # Killed after one shard, then rerun: the same basis and bytes as the straight run.
    kill_teach_after(
        1, recipe, teacher, tokenizer, data, tmp_path / "b", monkeypatch, hidden_layers=layers
    )
    teach(recipe, teacher, tokenizer, data, directory=tmp_path / "b", hidden_layers=layers)
    assert hidden_files(directory) == hidden_files(tmp_path / "b")
    # A damaged shard is taught again in the same basis; a damaged basis, every shard anew.
    victim = directory / "hidden-00001.bin"
    victim.write_bytes(victim.read_bytes()[:-3])
    teach(recipe, teacher, tokenizer, data, directory=directory, hidden_layers=layers)
    assert hidden_files(directory) == hidden_files(tmp_path / "b")
    basis = directory / "hidden-basis.safetensors"
    basis.write_bytes(basis.read_bytes()[:-1] + b"\1")
    with pytest.raises(PotstillError, match=r"hidden-basis\.safetensors is corrupt"):
        TeacherCache.load(directory, source_of(recipe, tokenizer, data))
    teach(recipe, teacher, tokenizer, data, directory=directory, hidden_layers=layers)
    assert hidden_files(directory) == hidden_files(tmp_path / "b")
    # Another error target is another cache: refused, not mixed.
    other = recipe.model_copy(
        update={"teach": recipe.teach.model_copy(update={"hidden_error": 0.0})}
    )
    with pytest.raises(PotstillError, match=r"teach\.hidden_error"):
        teach(other, teacher, tokenizer, data, directory=directory, hidden_layers=layers)


def test_the_cache_decodes_shards_as_training_reaches_them_and_keeps_a_few(setup, tmp_path):
    recipe, teacher, tokenizer, data = setup
    layers = (1, 3)
    teach(recipe, teacher, tokenizer, data, directory=tmp_path, hidden_layers=layers)
    source = source_of(recipe, tokenizer, data)
    manifest = TeacherCache.load(tmp_path, source).manifest
    assert len(manifest.shards) >= 3
    everything = TeacherCache.load(tmp_path, source, resident=len(manifest.shards))
    streamed = TeacherCache.load(tmp_path, source, resident=1)
    assert not streamed._decoded  # loading verified the files and decoded nothing
    request = SignalRequest(distributions=True, hidden_layers=layers)
    plan = manifest.plan
    for start in range(0, len(plan), 2):  # training's order, two blocks a batch
        batch = data.train.batch(torch.tensor(plan[start : start + 2]))
        want, got = everything.outputs(batch, request), streamed.outputs(batch, request)
        for name in ("ids", "logprobs", "tail_logprob"):
            assert torch.equal(getattr(want.distributions, name), getattr(got.distributions, name))
        for layer in layers:
            assert torch.equal(want.hidden_states[layer], got.hidden_states[layer])
        assert len(streamed._decoded) <= 1 and len(streamed._pending) <= 1
    # What the cache gives back is what the codec decodes from each shard's file.
    first = manifest.shards[0]
    ids, logprobs, _ = codec.decode((tmp_path / first.fields.top_k.file).read_bytes())
    signal = streamed.signal(torch.tensor(first.blocks))
    k = signal.ids.shape[-1]
    assert torch.equal(signal.ids.reshape(-1, k), torch.from_numpy(ids))
    assert torch.equal(signal.logprobs.reshape(-1, k), torch.from_numpy(logprobs))
    # A shard damaged after loading is refused when training reaches it, in one line.
    late = manifest.shards[-1]
    path = tmp_path / late.fields.top_k.file
    path.write_bytes(path.read_bytes()[:-4])
    damaged = TeacherCache(tmp_path, manifest, resident=1)
    with pytest.raises(PotstillError, match="does not decode") as error:
        damaged.signal(torch.tensor(late.blocks))
    assert "\n" not in str(error.value)
