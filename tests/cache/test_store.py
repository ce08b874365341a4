"""The cache manifest (format 2) and its upgrade from format 1, on real `codec` shards."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from potstill.cache import codec
from potstill.cache.reader import TeacherCache
from potstill.cache.store import MANIFEST, CacheWriter, Fidelity, Manifest, Shard, read_manifest
from potstill.util.errors import PotstillError

SOURCE = {
    "teacher": "bundled:tiny",
    "teacher_sha256": "a" * 64,
    "tokenizer_sha256": "b" * 64,
    "data_fingerprint": "c" * 64,
    "block_size": 5,
}
V, K, BITS, T = 50, 8, 8, 2.0
P = SOURCE["block_size"] - 1  # teacher positions per block
PLAN = [3, 0, 2, 1]
SHARDS = [[3, 0], [2, 1]]  # blocks of shard 0 and shard 1, in teaching order
# Sums chosen to be exact in binary: 8 tokens, KL mean 0.25, tail mass mean 0.5.
FIDELITY = [
    {"tokens": P, "kl_sum": 0.5, "tail_mass_sum": 1.0},
    {"tokens": P, "kl_sum": 1.5, "tail_mass_sum": 3.0},
]


def make_payload(blocks: list[int], seed: int) -> bytes:
    """A real top-k payload for ``len(blocks) × P`` tokens of Gaussian logits."""
    logits = np.random.default_rng(seed).standard_normal((len(blocks) * P, V)) * 3.0
    full = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # (n, V)
    ids = np.argsort(-full, axis=1)[:, :K]  # (n, K)
    logprobs = np.take_along_axis(full, ids, axis=1)
    tail = np.log1p(-np.exp(logprobs).sum(axis=1))  # (n,)
    return codec.encode(ids, logprobs, tail, vocab_size=V, bits=BITS)


PAYLOADS = [make_payload(blocks, seed) for seed, blocks in enumerate(SHARDS)]
SIZE = sum(len(p) for p in PAYLOADS)
TOKENS = len(PLAN) * P


def fresh(**changes) -> Manifest:
    settings = {"vocab_size": V, "top_k": K, "temperature": T, "bits": BITS, "plan": PLAN}
    return Manifest.new(SOURCE, **{**settings, **changes})


def write_v2(directory) -> CacheWriter:
    writer = CacheWriter.open(directory, fresh())
    for blocks, payload, fidelity in zip(SHARDS, PAYLOADS, FIDELITY, strict=True):
        writer.write_shard(blocks, payload, Fidelity(**fidelity))
    return writer


def write_v1(directory) -> dict:
    """A finished cache exactly as potstill wrote format 1: flat, one file per shard."""
    shards = []
    for index, (blocks, payload, fidelity) in enumerate(
        zip(SHARDS, PAYLOADS, FIDELITY, strict=True)
    ):
        name = f"shard-{index:05d}.bin"
        (directory / name).write_bytes(payload)
        sha256 = hashlib.sha256(payload).hexdigest()
        shards.append(
            {"file": name, "sha256": sha256, "bytes": len(payload), "blocks": blocks}
            | {"fidelity": fidelity}
        )
    manifest = {
        "format": 1,
        "teacher": SOURCE["teacher"],
        "teacher_sha256": SOURCE["teacher_sha256"],
        "tokenizer_sha256": SOURCE["tokenizer_sha256"],
        "vocab_size": V,
        "data_fingerprint": SOURCE["data_fingerprint"],
        "block_size": SOURCE["block_size"],
        "top_k": K,
        "temperature": T,
        "bits": BITS,
        "plan": PLAN,
        "shards": shards,
        "tokens": TOKENS,
        "bytes": SIZE,
        "bytes_per_token": SIZE / TOKENS,
        "complete": True,
        "reconstruction_kl_mean": 0.25,
        "tail_mass_mean": 0.5,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def shard_entries(codec_version: int) -> tuple[dict, list[dict]]:
    """The ``fields`` section and ``shards`` list the JSON should hold for `SHARDS`."""
    fields = {
        "top_k": {
            "codec": "ptkc",
            "codec_version": codec_version,
            "k": K,
            "temperature": T,
            "bits": BITS,
            "samples": 0,  # a top-k cache: no draws
            "seed": 0,
            "bytes": SIZE,
            "bytes_per_token": SIZE / TOKENS,
            "reconstruction_kl_mean": 0.25,
            "tail_mass_mean": 0.5,
        }
    }
    shards = [
        {
            "blocks": blocks,
            "rank": 0,
            "fields": {
                "top_k": {
                    "file": f"shard-{index:05d}.bin",
                    "sha256": hashlib.sha256(payload).hexdigest(),
                    "bytes": len(payload),
                    "fidelity": fidelity,
                }
            },
        }
        for index, (blocks, payload, fidelity) in enumerate(
            zip(SHARDS, PAYLOADS, FIDELITY, strict=True)
        )
    ]
    return fields, shards


def test_the_manifest_has_a_section_per_field_and_a_checksum_per_shard_file(tmp_path):
    write_v2(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    fields, shards = shard_entries(codec.VERSION)
    assert manifest == {
        "format": 2,
        "source": {**SOURCE, "vocab_size": V},
        "fields": fields,
        "plan": PLAN,
        "shards": shards,
        "tokens": TOKENS,
        "bytes": SIZE,
        "bytes_per_token": SIZE / TOKENS,
        "complete": True,
    }
    for index, payload in enumerate(PAYLOADS):
        assert (tmp_path / f"shard-{index:05d}.bin").read_bytes() == payload


def test_a_new_cache_is_written_empty_and_incomplete(tmp_path):
    writer = CacheWriter.open(tmp_path, fresh())
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["shards"] == [] and manifest["tokens"] == 0 and not manifest["complete"]
    assert manifest["fields"]["top_k"]["bytes"] == 0
    assert manifest["fields"]["top_k"]["reconstruction_kl_mean"] is None
    assert writer.manifest.remaining() == PLAN


def test_the_manifest_round_trips_through_json_and_reads_through_its_sections(tmp_path):
    manifest = write_v2(tmp_path).manifest
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest
    assert read_manifest(tmp_path) == manifest
    views = ["teacher", "teacher_sha256", "tokenizer_sha256", "data_fingerprint", "block_size"]
    views += ["vocab_size", "top_k", "temperature", "bits"]
    views += ["reconstruction_kl_mean", "tail_mass_mean", "positions"]
    assert {name: getattr(manifest, name) for name in views} == {
        **SOURCE,
        "vocab_size": V,
        "top_k": K,
        "temperature": T,
        "bits": BITS,
        "reconstruction_kl_mean": 0.25,
        "tail_mass_mean": 0.5,
        "positions": P,
    }
    assert manifest.remaining() == [] and manifest.covered == {0, 1, 2, 3}
    # a shard another process taught keeps its rank
    other = manifest.shards[0].model_copy(update={"rank": 3})
    ranked = manifest.model_copy(update={"shards": [other]})
    assert Manifest.model_validate_json(ranked.model_dump_json()).shards[0].rank == 3


def test_the_manifest_refuses_unknown_sections():
    data = json.loads(fresh().model_dump_json())
    data["fields"]["hidden"] = {"layers": [3]}
    with pytest.raises(ValidationError, match="hidden"):
        Manifest.model_validate(data)
    shard = {"blocks": [0], "fields": {"top_k": {"file": "x", "sha256": "0", "bytes": 1}}}
    with pytest.raises(ValidationError, match="fidelity"):
        Shard.model_validate(shard)


def test_the_flat_constructor_builds_the_same_manifest_as_new():
    flat = Manifest(**SOURCE, vocab_size=V, top_k=K, temperature=T, bits=BITS, plan=PLAN)
    assert flat.with_totals() == fresh()
    assert flat.format == 2 and flat.fields.top_k.k == K


def test_a_format_1_cache_is_read_as_format_2(tmp_path):
    written = write_v1(tmp_path)
    before = (tmp_path / MANIFEST).read_text()
    cache = TeacherCache.load(tmp_path, SOURCE)
    assert (tmp_path / MANIFEST).read_text() == before  # reading never writes
    fields, shards = shard_entries(codec_version=1)
    dump = cache.manifest.model_dump(include={"format", "fields", "shards"}, exclude_none=True)
    assert dump == {
        "format": 2,
        "fields": fields,
        "shards": shards,
    }
    assert cache.manifest.source.model_dump() == {**SOURCE, "vocab_size": V}
    shown = ["top_k", "temperature", "bits", "tokens", "bytes", "bytes_per_token"]
    shown += ["reconstruction_kl_mean", "tail_mass_mean"]
    assert cache.summary() == {"samples": 0, **{key: written[key] for key in shown}}
    # block 1 is the second block of shard 1, block 3 the first of shard 0
    signal = cache.signal(torch.tensor([1, 3]))
    for row, (shard, rows) in enumerate([(1, slice(P, 2 * P)), (0, slice(0, P))]):
        ids, logprobs, tail = codec.decode(PAYLOADS[shard])  # (2P, K), (2P, K), (2P,)
        assert torch.equal(signal.ids[row], torch.from_numpy(ids[rows]))
        assert torch.equal(signal.logprobs[row], torch.from_numpy(logprobs[rows]))
        assert torch.equal(signal.tail_logprob[row], torch.from_numpy(tail[rows]))
    assert signal.temperature == T
    with pytest.raises(PotstillError, match="another dataset"):
        TeacherCache.load(tmp_path, {**SOURCE, "data_fingerprint": "d" * 64})


def test_opening_a_format_1_cache_upgrades_its_manifest_on_disk(tmp_path):
    write_v1(tmp_path)
    lines = []
    writer = CacheWriter.open(tmp_path, fresh(), log=lines.append)
    assert lines == [f"teacher cache {tmp_path}: {MANIFEST} upgraded from format 1"]
    assert writer.manifest.remaining() == []
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    fields, shards = shard_entries(codec_version=1)
    assert manifest["format"] == 2 and manifest["source"] == {**SOURCE, "vocab_size": V}
    assert manifest["fields"] == fields and manifest["shards"] == shards
    assert (manifest["tokens"], manifest["bytes"], manifest["complete"]) == (TOKENS, SIZE, True)
    # written atomically: no temporary file is left beside it, and the shards are untouched
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [MANIFEST, "shard-00000.bin", "shard-00001.bin"]
    assert [(tmp_path / n).read_bytes() for n in names[1:]] == PAYLOADS
    # once upgraded, it opens quietly and unchanged, and serves training
    upgraded = (tmp_path / MANIFEST).read_text()
    lines.clear()
    CacheWriter.open(tmp_path, fresh(), log=lines.append)
    assert lines == [] and (tmp_path / MANIFEST).read_text() == upgraded
    assert TeacherCache.load(tmp_path, SOURCE).signal(torch.arange(4)).ids.shape == (4, P, K)


def test_a_format_1_cache_with_a_corrupt_shard_is_refused_then_taught_again(tmp_path):
    write_v1(tmp_path)
    shard = tmp_path / "shard-00001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:40] + bytes([data[40] ^ 0xFF]) + data[41:])
    with pytest.raises(PotstillError, match=r"shard-00001\.bin is corrupt") as error:
        TeacherCache.load(tmp_path, SOURCE)
    assert "\n" not in str(error.value) and "potstill teach" in str(error.value)
    lines = []
    writer = CacheWriter.open(tmp_path, fresh(), log=lines.append)
    problem = f"{shard} is corrupt (sha256 mismatch)"
    assert lines[0] == f"cache shard {problem}: teaching its blocks again"
    assert writer.manifest.remaining() == [2, 1] and not shard.exists()
    assert json.loads((tmp_path / MANIFEST).read_text())["shards"] == shard_entries(1)[1][:1]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"top_k": 4}, r"another teach\.top_k \(8, the recipe has 4\)"),
        ({"bits": 6}, r"another teach\.bits \(8, the recipe has 6\)"),
        ({"temperature": 1.0}, r"another temperature \(2\.0, the recipe has 1\.0\)"),
        ({"vocab_size": 64}, r"another vocabulary size \(50, the recipe has 64\)"),
    ],
)
def test_a_format_1_cache_made_with_other_settings_is_refused_untouched(tmp_path, change, words):
    write_v1(tmp_path)
    before = (tmp_path / MANIFEST).read_text()
    with pytest.raises(PotstillError, match=words):
        CacheWriter.open(tmp_path, fresh(**change))
    assert (tmp_path / MANIFEST).read_text() == before


def test_a_manifest_of_a_future_format_is_refused_in_one_line(tmp_path):
    future = {"format": 3, "source": {**SOURCE, "vocab_size": V}, "streams": {}}
    (tmp_path / MANIFEST).write_text(json.dumps(future))
    with pytest.raises(PotstillError) as error:
        read_manifest(tmp_path)
    assert str(error.value) == (
        f"teacher cache {tmp_path} has {MANIFEST} format 3, this potstill reads formats 1 to "
        "2: update potstill, or rerun `potstill teach` into a new run (name=NEW)"
    )
    with pytest.raises(PotstillError, match="format 3"):
        CacheWriter.open(tmp_path, fresh())
    assert json.loads((tmp_path / MANIFEST).read_text()) == future  # left as it was


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"format": 2, "source": ', "JSONDecodeError"),
        ("[2]", "no format number"),
        ('{"source": {}}', "no format number"),
        ('{"format": 2, "plan": []}', "ValidationError"),  # sections missing
        ('{"format": 1, "teacher": "x"}', "ValidationError"),
    ],
)
def test_a_malformed_manifest_is_refused_in_one_line(tmp_path, text, why):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(PotstillError) as error:
        TeacherCache.load(tmp_path, SOURCE)
    assert str(error.value) == (
        f"teacher cache {tmp_path} has an unreadable {MANIFEST} ({why}); delete the folder "
        "and rerun `potstill teach`"
    )
