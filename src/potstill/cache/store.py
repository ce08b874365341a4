"""The teacher cache on disk: a ``manifest.json`` and checksummed shards.

```
runs/NAME/cache/
  manifest.json      what made the cache (teacher, tokenizer, data, k, temperature, bits),
                     the blocks it plans to hold, and every shard written so far
  shard-00000.bin    one `codec` payload: ``len(blocks) × (block_size − 1)`` tokens
```

A shard holds the teacher's signal for the positions of whole training blocks: position
``t`` of a block is the teacher's prediction of token ``t + 1``, exactly what the training
loop compares the student with. Every shard is written atomically and only then entered
in the manifest (itself replaced atomically), so a killed ``teach`` leaves a valid cache
of the shards it finished, and a rerun continues with the blocks still missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from potstill.cache import codec
from potstill.util.errors import PotstillError
from potstill.util.io import sha256_file
from potstill.util.io import atomic_write_bytes, atomic_write_text
from potstill.signals.distributions import SparseSignal

MANIFEST = "manifest.json"
FORMAT = 1

# Manifest fields that say what made a cache, with the words an error message uses.
# The first group decides what the signal *means*: a cache with any of them different
# is refused for training. The second only decides its resolution; `teach` refuses to
# extend a cache made with other settings.
SOURCE_FIELDS = {
    "teacher": "teacher",
    "teacher_sha256": "teacher (weights)",
    "tokenizer_sha256": "tokenizer",
    "data_fingerprint": "dataset",
    "block_size": "block size",
}
SETTINGS_FIELDS = {
    "vocab_size": "vocabulary size",
    "top_k": "teach.top_k",
    "temperature": "temperature",
    "bits": "teach.bits",
}


class Fidelity(BaseModel):
    """How far the reconstructed distribution is from the teacher's full one.

    Measured on a sample of each shard's tokens, its first block (the full-vocabulary KL
    of 8 blocks took 1.2 s against 2.0 s for the teacher's forward pass over them):
    ``KL(teacher ‖ cache)`` where the cache's distribution puts the dequantized
    probabilities on the k ids and spreads the tail mass evenly over the other ids.
    """

    model_config = ConfigDict(extra="forbid")
    tokens: int = 0
    kl_sum: float = 0.0
    tail_mass_sum: float = 0.0

    def __add__(self, other: Fidelity) -> Fidelity:
        return Fidelity(
            tokens=self.tokens + other.tokens,
            kl_sum=self.kl_sum + other.kl_sum,
            tail_mass_sum=self.tail_mass_sum + other.tail_mass_sum,
        )

    @property
    def kl_mean(self) -> float:
        return self.kl_sum / max(self.tokens, 1)

    @property
    def tail_mass_mean(self) -> float:
        return self.tail_mass_sum / max(self.tokens, 1)


class Shard(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str
    bytes: int
    blocks: list[int]
    fidelity: Fidelity


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: int = FORMAT
    teacher: str
    teacher_sha256: str
    tokenizer_sha256: str
    vocab_size: int
    data_fingerprint: str
    block_size: int
    top_k: int
    temperature: float
    bits: int
    plan: list[int]  # the training blocks the cache is to hold, in teaching order
    shards: list[Shard] = []
    # Totals over the shards, kept for readers of the JSON (recomputed on every write).
    tokens: int = 0
    bytes: int = 0
    bytes_per_token: float | None = None
    complete: bool = False
    reconstruction_kl_mean: float | None = None
    tail_mass_mean: float | None = None

    @property
    def positions(self) -> int:
        """Teacher predictions per block: every position but the last."""
        return self.block_size - 1

    @property
    def covered(self) -> set[int]:
        return {b for shard in self.shards for b in shard.blocks}

    def remaining(self) -> list[int]:
        covered = self.covered
        return [b for b in self.plan if b not in covered]

    def with_totals(self) -> Manifest:
        fidelity = sum((s.fidelity for s in self.shards), Fidelity())
        tokens = sum(len(s.blocks) for s in self.shards) * self.positions
        size = sum(s.bytes for s in self.shards)
        return self.model_copy(
            update={
                "tokens": tokens,
                "bytes": size,
                "bytes_per_token": size / tokens if tokens else None,
                "complete": not self.remaining(),
                "reconstruction_kl_mean": fidelity.kl_mean if fidelity.tokens else None,
                "tail_mass_mean": fidelity.tail_mass_mean if fidelity.tokens else None,
            }
        )


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest in ``directory``, or None when there is none; a bad one is an error."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as e:
        raise PotstillError(
            f"teacher cache {directory} has an unreadable {MANIFEST} ({type(e).__name__}); "
            "delete the folder and rerun `potstill teach`"
        ) from None
    if manifest.format != FORMAT:
        raise PotstillError(
            f"teacher cache {directory} has format {manifest.format}, this potstill reads "
            f"format {FORMAT}: rerun `potstill teach` into a new run (name=NEW)"
        )
    return manifest


def check_source(found: Manifest, expected: dict[str, Any], directory: Path, fields: dict) -> None:
    """Refuse a cache whose ``fields`` differ from ``expected``, naming the first one."""
    for field, words in fields.items():
        if field not in expected:
            continue
        have, want = getattr(found, field), expected[field]
        if have != want:
            raise PotstillError(
                f"teacher cache {directory} was made with another {words} "
                f"({_short(have)}, the recipe has {_short(want)}): rerun `potstill teach` "
                "for this recipe under a new name (name=NEW), or set teach.cache to a "
                "cache made by it"
            )


def _short(value: Any) -> str:
    text = str(value)
    return (
        f"{text[:12]}…" if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text
    )


class CacheWriter:
    """Adds shards to a cache folder, one atomic shard and manifest update at a time."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = directory
        self.manifest = manifest

    @classmethod
    def open(cls, directory: Path, fresh: Manifest, *, log=lambda _: None) -> CacheWriter:
        """Start ``fresh`` in ``directory``, or continue the cache already there.

        An existing cache must match ``fresh`` in everything that made it, and plan the same
        blocks or be finished and hold them all. Its shards are verified; a missing,
        truncated or corrupt shard is dropped (and its blocks taught again).
        """
        directory.mkdir(parents=True, exist_ok=True)
        found = read_manifest(directory)
        if found is None:
            writer = cls(directory, fresh.with_totals())
            writer._save()
            return writer
        check_source(found, fresh.model_dump(), directory, SOURCE_FIELDS | SETTINGS_FIELDS)
        # A finished cache that holds every block wanted (e.g. one taught with
        # teach.blocks=all) serves as it is.
        serves = found.complete and set(fresh.plan) <= found.covered
        if found.plan != fresh.plan and not serves:
            raise PotstillError(
                f"teacher cache {directory} plans other blocks ({len(found.plan)}, the recipe "
                f"needs {len(fresh.plan)}): teach into a new run (name=NEW)"
            )
        good = []
        for shard in found.shards:
            problem = shard_problem(directory, shard)
            if problem is None:
                good.append(shard)
            else:
                log(f"cache shard {shard.file} {problem}: teaching its blocks again")
                (directory / shard.file).unlink(missing_ok=True)
        writer = cls(directory, found.model_copy(update={"shards": good}).with_totals())
        writer._save()
        return writer

    def write_shard(self, blocks: list[int], payload: bytes, fidelity: Fidelity) -> None:
        used = {s.file for s in self.manifest.shards}
        index = len(self.manifest.shards)
        while (name := f"shard-{index:05d}.bin") in used:
            index += 1
        path = self.directory / name
        atomic_write_bytes(path, payload)
        shard = Shard(
            file=name,
            sha256=sha256_file(path),
            bytes=len(payload),
            blocks=list(blocks),
            fidelity=fidelity,
        )
        self.manifest = self.manifest.model_copy(
            update={"shards": [*self.manifest.shards, shard]}
        ).with_totals()
        self._save()

    def _save(self) -> None:
        atomic_write_text(self.directory / MANIFEST, self.manifest.model_dump_json(indent=1))


def shard_problem(directory: Path, shard: Shard) -> str | None:
    """Why a shard cannot be trusted ("is missing", "is truncated", …), or None."""
    path = directory / shard.file
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != shard.bytes:
        return f"is truncated ({size} of {shard.bytes} bytes)"
    if sha256_file(path) != shard.sha256:
        return "is corrupt (sha256 mismatch)"
    return None


class TeacherCache:
    """A finished cache, decoded into memory, that hands out `SparseSignal` batches.

    Per cached token it keeps ``k`` int32 ids, ``k`` float32 log-probabilities and a float32
    tail: ``8k + 4`` bytes (516 at k = 64, 34 MB for the default run's 66k tokens),
    against under 100 on disk.
    """

    def __init__(self, manifest: Manifest, ids, logprobs, tail, rows: torch.Tensor) -> None:
        self.manifest = manifest
        self.ids = ids  # (blocks, P, K) int32
        self.logprobs = logprobs  # (blocks, P, K) float32
        self.tail = tail  # (blocks, P) float32
        self._rows = rows  # block index -> row, -1 where not cached

    @classmethod
    def load(cls, directory: Path, expected: dict[str, Any]) -> TeacherCache:
        """Read and verify every shard; refuse a cache that ``expected`` does not match."""
        manifest = read_manifest(directory)
        if manifest is None:
            raise PotstillError(
                f"no teacher cache at {directory}: run `potstill teach RECIPE` first, or set "
                "teach.enabled=false to run the teacher live"
            )
        check_source(manifest, expected, directory, SOURCE_FIELDS)
        if not manifest.complete:
            raise PotstillError(
                f"teacher cache {directory} is incomplete ({len(manifest.covered)} of "
                f"{len(manifest.plan)} blocks): finish it with `potstill teach RECIPE`"
            )
        ids, logprobs, tail, blocks = [], [], [], []
        shape = (-1, manifest.positions)
        for shard in manifest.shards:
            problem = shard_problem(directory, shard)
            if problem is None:
                try:
                    shard_ids, shard_logprobs, shard_tail = codec.decode(
                        (directory / shard.file).read_bytes()
                    )
                except ValueError as e:
                    problem = f"does not decode ({e})"
            if problem is not None:
                raise PotstillError(
                    f"teacher cache shard {directory / shard.file} {problem}: rerun "
                    "`potstill teach RECIPE` to teach its blocks again"
                )
            if shard_ids.shape[0] != len(shard.blocks) * manifest.positions:
                raise PotstillError(
                    f"teacher cache shard {directory / shard.file} holds {shard_ids.shape[0]} "
                    f"tokens, its manifest entry says {len(shard.blocks) * manifest.positions}"
                )
            k = shard_ids.shape[1]
            ids.append(torch.from_numpy(shard_ids.astype(np.int32)).reshape(*shape, k))
            logprobs.append(torch.from_numpy(shard_logprobs.astype(np.float32)).reshape(*shape, k))
            tail.append(torch.from_numpy(shard_tail.astype(np.float32)).reshape(shape))
            blocks.extend(shard.blocks)
        order = torch.tensor(blocks, dtype=torch.long)
        rows = torch.full((int(order.max()) + 1 if blocks else 0,), -1, dtype=torch.long)
        rows[order] = torch.arange(len(blocks))
        return cls(manifest, torch.cat(ids), torch.cat(logprobs), torch.cat(tail), rows)

    def check_covers(self, blocks: list[int]) -> None:
        missing = [b for b in blocks if b >= len(self._rows) or self._rows[b] < 0]
        if missing:
            raise PotstillError(
                f"the teacher cache holds {len(self.ids)} blocks but training needs "
                f"{len(missing)} more (e.g. block {missing[0]}): teach with the same train "
                "settings, or with teach.blocks=all"
            )

    def signal(self, input_ids: torch.Tensor, block_index: torch.Tensor) -> SparseSignal:
        """The cached signal of training blocks ``block_index``: ``(B, block_size − 1, …)``.

        ``input_ids`` (the blocks' tokens) are not needed: the cache is keyed by block."""
        rows = self._rows[block_index]
        if bool((rows < 0).any()):
            self.check_covers([int(b) for b in block_index])
        return SparseSignal(
            self.ids[rows],
            self.logprobs[rows],
            self.tail[rows],
            temperature=self.manifest.temperature,
        )

    def summary(self) -> dict[str, Any]:
        """The numbers a report shows about the cache."""
        m = self.manifest
        return {
            "top_k": m.top_k,
            "temperature": m.temperature,
            "bits": m.bits,
            "tokens": m.tokens,
            "bytes": m.bytes,
            "bytes_per_token": m.bytes_per_token,
            "reconstruction_kl_mean": m.reconstruction_kl_mean,
            "tail_mass_mean": m.tail_mass_mean,
        }
