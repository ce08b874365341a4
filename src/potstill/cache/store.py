"""The teacher cache on disk: a ``manifest.json`` and checksummed shards.

```
runs/NAME/cache/
  manifest.json      format 2: what made the cache (`Source`), one section per stored
                     field (`Fields`: today only ``top_k``), the blocks it plans to hold,
                     and every shard written so far
  shard-00000.bin    the ``top_k`` field of shard 0: one `codec` payload of
                     ``len(blocks) × (block_size − 1)`` tokens
```

A shard holds the teacher's signal for the positions of whole training blocks: position
``t`` of a block is the teacher's prediction of token ``t + 1``, exactly what the training
loop compares the student with. A shard has one file per stored field, each with its own
checksum, and the ``rank`` of the process that taught it (0 on one process). Every file is
written atomically and only then entered in the manifest (itself replaced atomically), so
a killed ``teach`` leaves a valid cache of the shards it finished, and a rerun continues
with the blocks still missing.

Several processes (``potstill teach`` under ``torchrun``) teach at once: rank 0 opens the
cache, each rank writes its own shards (``shard-rR-BBBBBBB.bin``, named by rank and first
block) and lists them in its own journal (``journal-rR.json``, replaced atomically after
each shard) instead of the manifest, and rank 0 merges the journals into the manifest at
the end (`CacheWriter.merge_journals`). A journal left by a killed rank is merged, shard by
verified shard, when the cache is next opened; only the blocks no rank finished are taught
again.

A format-1 manifest (flat: ``teacher``, ``top_k``, … at the top, one file per shard) is
read as format 2; the next `CacheWriter.open` rewrites it on disk as format 2.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potstill.cache import codec
from potstill.cache import states as states_codec
from potstill.cache.manifest import (
    FORMAT,
    MANIFEST,
    SETTINGS_FIELDS,
    SOURCE_FIELDS,
    Fidelity,
    HiddenFile,
    Manifest,
    Shard,
    ShardFields,
    StoredFile,
    TopKFile,
    check_codec,
    check_source,
    read_manifest,
    read_with_format,
)
from potstill.data.batch import Batch
from potstill.signals import SignalRequest, SparseSignal, TeacherOutputs
from potstill.util.errors import PotstillError
from potstill.util.io import atomic_write_bytes, atomic_write_text, sha256_file

__all__ = [
    "MANIFEST",
    "CacheWriter",
    "Fidelity",
    "Manifest",
    "TeacherCache",
    "check_source",
    "read_manifest",
    "shard_problem",
]


JOURNALS = "journal-r*.json"
BASIS = "hidden-basis{rank}.safetensors"  # one per process that codes hidden states


class CacheWriter:
    """Adds shards to a cache folder, one atomic shard and manifest update at a time (or,
    as one rank of several, journal update: `for_rank`)."""

    def __init__(self, directory: Path, manifest: Manifest, rank: int | None = None) -> None:
        self.directory = directory
        self.manifest = manifest
        self.rank = rank  # None: the only writer, straight into the manifest
        self._journal: list[Shard] = []
        self._basis: states_codec.Basis | None = None  # with hidden_error > 0
        self._basis_file: StoredFile | None = None

    def for_rank(self, rank: int) -> CacheWriter:
        """A writer for one of several processes: its shards go to its own journal."""
        return CacheWriter(self.directory, self.manifest, rank)

    def merge_journals(self, *, log=lambda _: None) -> None:
        """Enter every rank's journalled shards in the manifest (each verified first; a
        bad one is dropped and its blocks stay to teach), then remove the journals."""
        journals = sorted(self.directory.glob(JOURNALS))
        if not journals:
            return
        listed = {stored.file for shard in self.manifest.shards for stored in shard.files()}
        covered = self.manifest.covered
        added = []
        for path in journals:
            try:
                entries = [Shard.model_validate(e) for e in json.loads(path.read_text())]
            except (OSError, ValueError) as e:
                log(f"cache journal {path} is unreadable ({type(e).__name__}): ignored")
                entries = []
            for shard in entries:
                if shard.fields.top_k.file in listed or covered.intersection(shard.blocks):
                    continue  # merged before a kill stopped the cleanup
                problem = shard_problem(self.directory, shard)
                if problem is not None:
                    log(f"cache shard {problem}: teaching its blocks again")
                    continue
                added.append(shard)
                covered = covered | set(shard.blocks)
        self.manifest = self.manifest.model_copy(
            update={"shards": [*self.manifest.shards, *added]}
        ).with_totals()
        self._save()  # the manifest holds them before any journal goes
        for path in journals:
            path.unlink(missing_ok=True)

    @classmethod
    def open(cls, directory: Path, fresh: Manifest, *, log=lambda _: None) -> CacheWriter:
        """Start ``fresh`` in ``directory``, or continue the cache already there.

        An existing cache must match ``fresh`` in everything that made it; blocks ``fresh``
        plans that it does not are added to its plan. Its shards are verified; a missing,
        truncated or corrupt shard is dropped (and its blocks taught again). A format-1
        manifest is rewritten as format 2.
        """
        directory.mkdir(parents=True, exist_ok=True)
        found = read_with_format(directory)
        if found is None:
            writer = cls(directory, fresh.with_totals())
            writer._save()
            return writer
        found, version = found
        fields = SOURCE_FIELDS | SETTINGS_FIELDS
        check_source(found, {f: getattr(fresh, f) for f in fields}, directory, fields)
        check_codec(found, directory)
        if any(directory.glob(JOURNALS)):  # a multi-process teach was killed: keep its work
            merger = cls(directory, found)
            merger.merge_journals(log=log)
            found = merger.manifest
        # A block's signal depends only on what made the cache (checked above), not on the
        # plan: a recipe that needs other blocks (more steps, teach.blocks=all) extends the
        # plan, and what is already taught is kept.
        planned = set(found.plan)
        extra = [b for b in fresh.plan if b not in planned]
        if extra:
            log(f"teacher cache {directory}: {len(extra)} more blocks planned")
            found = found.model_copy(update={"plan": [*found.plan, *extra]})
        good = []
        for shard in found.shards:
            problem = shard_problem(directory, shard)
            if problem is None:
                good.append(shard)
            else:
                log(f"cache shard {problem}: teaching its blocks again")
                for stored in shard.own_files():
                    (directory / stored.file).unlink(missing_ok=True)
        if version != FORMAT:
            log(f"teacher cache {directory}: {MANIFEST} upgraded from format {version}")
        writer = cls(directory, found.model_copy(update={"shards": good}).with_totals())
        writer._save()
        return writer

    def write_shard(
        self,
        blocks: list[int],
        payload: bytes,
        fidelity: Fidelity,
        hidden: np.ndarray | None = None,
    ) -> None:
        """Write ``payload``, the `codec` top-k payload of ``blocks``, as the next shard,
        with ``hidden``, their ``(tokens, layers, width)`` float32 hidden states, when the
        cache keeps them (as float16, or coded in this writer's basis: `potstill.cache.states`)."""
        spec = self.manifest.fields.hidden
        if (hidden is None) != (spec is None):
            raise ValueError("a shard has hidden states exactly when the cache keeps them")
        if self.rank is None:
            used = {stored.file for s in self.manifest.shards for stored in s.files()}
            index = len(self.manifest.shards)
            while f"shard-{index:05d}.bin" in used or f"hidden-{index:05d}.bin" in used:
                index += 1
            tag = f"{index:05d}"
        else:  # unique without asking the others: each block is taught in one shard
            tag = f"r{self.rank}-{blocks[0]:07d}"
        path = self.directory / f"shard-{tag}.bin"
        atomic_write_bytes(path, payload)
        top_k = TopKFile(
            file=path.name, sha256=sha256_file(path), bytes=len(payload), fidelity=fidelity
        )
        states = None
        if hidden is not None:
            expected = (len(blocks) * self.manifest.positions, len(spec.layers), spec.width)
            if hidden.shape != expected or hidden.dtype != np.float32:
                raise ValueError(
                    f"hidden states must be {expected} float32, got {hidden.shape} {hidden.dtype}"
                )
            basis, error = None, None
            if spec.codec == "float16":
                data = hidden.astype("<f2").tobytes()
            else:
                basis = self._basis_for(hidden)
                data, error = states_codec.encode_states(hidden, self._basis)
            states_path = self.directory / f"hidden-{tag}.bin"
            atomic_write_bytes(states_path, data)
            states = HiddenFile(
                file=states_path.name,
                sha256=sha256_file(states_path),
                bytes=len(data),
                basis=basis,
                error=error,
            )
        shard = Shard(
            blocks=list(blocks), rank=self.rank or 0, fields=ShardFields(top_k=top_k, hidden=states)
        )
        if self.rank is not None:
            self._journal.append(shard)
            journal = [entry.model_dump(mode="json") for entry in self._journal]
            atomic_write_text(self.directory / f"journal-r{self.rank}.json", json.dumps(journal))
            return
        self.manifest = self.manifest.model_copy(
            update={"shards": [*self.manifest.shards, shard]}
        ).with_totals()
        self._save()

    def _save(self) -> None:
        data = self.manifest.model_dump(mode="json")
        # A cache without hidden states is written as before they existed.
        for fields in [data["fields"], *(shard["fields"] for shard in data["shards"])]:
            if fields.get("hidden") is None:
                fields.pop("hidden", None)
        atomic_write_text(self.directory / MANIFEST, json.dumps(data, indent=1))

    def _basis_for(self, states: np.ndarray) -> StoredFile:
        """This writer's basis (`potstill.cache.states`), as its shards reference it: the
        one its earlier shards were coded in, else fitted on ``states`` and written."""
        name = BASIS.format(rank="" if self.rank is None else f"-r{self.rank}")
        if self._basis is None:
            for shard in self.manifest.shards:
                stored = shard.fields.hidden.basis if shard.fields.hidden else None
                if stored is not None and stored.file == name:
                    path = self.directory / name
                    self._basis = states_codec.Basis.from_bytes(path.read_bytes())
                    self._basis_file = stored
                    break
        if self._basis is None:
            basis = states_codec.fit_basis(states, self.manifest.hidden_error)
            data = basis.to_bytes()
            path = self.directory / name
            atomic_write_bytes(path, data)
            self._basis = basis
            self._basis_file = StoredFile(file=name, sha256=sha256_file(path), bytes=len(data))
        return self._basis_file


def _read_hidden(
    directory: Path, shard: Shard, manifest: Manifest, bases: dict[str, states_codec.Basis]
) -> torch.Tensor:
    """A shard's hidden states, ``(blocks, positions, layers, width)`` float16 (decoded
    from the basis they were coded in, read once into ``bases``)."""
    hidden = manifest.fields.hidden
    stored = shard.fields.hidden
    if hidden is None or stored is None:
        raise PotstillError(
            f"teacher cache {directory}: a shard of blocks {shard.blocks[:3]}… has no hidden "
            "states; rerun `potstill teach RECIPE`"
        )
    shape = (len(shard.blocks), manifest.positions, len(hidden.layers), hidden.width)
    data = (directory / stored.file).read_bytes()
    if stored.basis is not None:
        name = stored.basis.file
        try:
            if name not in bases:
                bases[name] = states_codec.Basis.from_bytes((directory / name).read_bytes())
            states = states_codec.decode_states(data, bases[name])
        except ValueError as e:
            raise PotstillError(
                f"teacher cache shard {directory / stored.file} does not decode ({e}): rerun "
                "`potstill teach RECIPE`"
            ) from None
        values = states.astype(np.float16).reshape(-1)
    else:
        values = np.frombuffer(data, dtype="<f2").copy()
    if values.size != int(np.prod(shape)):
        raise PotstillError(
            f"teacher cache shard {directory / stored.file} holds {values.size} values, its "
            f"manifest entry says {int(np.prod(shape))}: rerun `potstill teach RECIPE`"
        )
    return torch.from_numpy(values).reshape(shape)


def _header_problem(directory: Path, shard: Shard, manifest: Manifest) -> str | None:
    """Why a verified shard's top-k payload is not one of this cache's ("PATH does not
    decode (…)", "PATH holds N tokens, …"), from its header alone; or None."""
    path = directory / shard.fields.top_k.file
    with open(path, "rb") as f:
        head = f.read(codec.HEADER_BYTES)
    try:
        tokens = codec.header_tokens(head)
    except ValueError as e:
        return f"{path} does not decode ({e})"
    expected = len(shard.blocks) * manifest.positions
    if tokens != expected:
        return f"{path} holds {tokens} tokens, its manifest entry says {expected}"
    return None


def shard_problem(directory: Path, shard: Shard) -> str | None:
    """Why a shard cannot be trusted ("PATH is missing", "PATH is truncated …", …), or None."""
    for stored in shard.files():
        path = directory / stored.file
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != stored.bytes:
            return f"{path} is truncated ({size} of {stored.bytes} bytes)"
        if sha256_file(path) != stored.sha256:
            return f"{path} is corrupt (sha256 mismatch)"
    return None


DEFAULT_MEMORY_MB = 1024.0  # teach.cache_memory_mb


def decoded_bytes_per_token(manifest: Manifest) -> int:
    """What a decoded token takes in memory: int32 ids, float32 log-probabilities (one per
    slot), a float32 tail, and float16 hidden states."""
    slots = manifest.top_k + manifest.samples
    hidden = manifest.fields.hidden
    states = 2 * len(hidden.layers) * hidden.width if hidden is not None else 0
    return 8 * slots + 4 + states


@dataclass(frozen=True)
class _Decoded:
    """One shard's signal, decoded: ``(blocks, P, K)`` int32 ids and float32
    log-probabilities, ``(blocks, P)`` float32 tails, and ``(blocks, P, layers, H)``
    float16 hidden states or None."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor
    hidden: torch.Tensor | None


class TeacherCache:
    """A finished cache that hands out `SparseSignal` batches, reading its shards as
    training reaches them.

    Loading verifies every file (size, sha256, payload header) but decodes nothing. A
    batch decodes the shards its blocks are in, and the next shard in teaching order (the
    order training visits the blocks) is decoded on a background thread meanwhile, so
    training rarely waits. At most ``resident`` decoded shards are kept (least recently
    used first out), whatever the size of the cache (`load` fits them to
    ``teach.cache_memory_mb``): per shard, ``8k + 4`` bytes per token (int32 ids, float32
    log-probabilities and tail: 1,540 at the default's 192 slots) plus ``2 × width`` per
    hidden layer kept; the default's 64-block shards take 12.5 MB, or 59 MB with five
    layers of hidden states, so its whole cache (eight shards) stays decoded.
    """

    def __init__(self, directory: Path, manifest: Manifest, *, resident: int = 3) -> None:
        if resident < 1:
            raise ValueError(f"resident must be at least 1, got {resident}")
        self.directory = directory
        self.manifest = manifest
        self.resident = resident
        blocks = [b for shard in manifest.shards for b in shard.blocks]
        size = max(blocks) + 1 if blocks else 0
        self._shard = torch.full((size,), -1, dtype=torch.long)  # block -> shard, -1: none
        self._row = torch.zeros(size, dtype=torch.long)  # block -> its row in the shard
        for index, shard in enumerate(manifest.shards):
            at = torch.tensor(shard.blocks, dtype=torch.long)
            self._shard[at] = index
            self._row[at] = torch.arange(len(shard.blocks))
        # Teaching order: shard by shard as the plan reaches their first blocks.
        position = {b: i for i, b in enumerate(manifest.plan)}
        visit = sorted(
            range(len(manifest.shards)),
            key=lambda i: min(position.get(b, len(position)) for b in manifest.shards[i].blocks),
        )
        self._next = dict(pairwise(visit))
        self._decoded: OrderedDict[int, _Decoded] = OrderedDict()
        self._pending: dict[int, Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._bases: dict[str, states_codec.Basis] = {}
        self._lock = threading.Lock()  # the bases dict, shared with the read-ahead thread

    @classmethod
    def load(
        cls,
        directory: Path,
        expected: dict[str, Any],
        *,
        memory_mb: float = DEFAULT_MEMORY_MB,
        resident: int | None = None,
    ) -> TeacherCache:
        """Verify every shard's files; refuse a cache that ``expected`` does not match.

        As many decoded shards are kept as fit in ``memory_mb`` (at least 2), or
        ``resident`` when given: a cache that fits is decoded once, a larger one streams.
        """
        manifest = read_manifest(directory)
        if manifest is None:
            raise PotstillError(
                f"no teacher cache at {directory}: run `potstill teach RECIPE` first, or set "
                "teach.enabled=false to run the teacher live"
            )
        check_source(manifest, expected, directory, SOURCE_FIELDS)
        check_codec(manifest, directory)
        if not manifest.complete:
            raise PotstillError(
                f"teacher cache {directory} is incomplete ({len(manifest.covered)} of "
                f"{len(manifest.plan)} blocks): finish it with `potstill teach RECIPE`"
            )
        for shard in manifest.shards:
            problem = shard_problem(directory, shard) or _header_problem(directory, shard, manifest)
            if problem is not None:
                raise PotstillError(
                    f"teacher cache shard {problem}: rerun `potstill teach RECIPE` to teach "
                    "its blocks again"
                )
        if resident is None:
            largest = max((len(shard.blocks) for shard in manifest.shards), default=1)
            per_shard = largest * manifest.positions * decoded_bytes_per_token(manifest)
            resident = max(2, int(memory_mb * 2**20 // max(per_shard, 1)))
        return cls(directory, manifest, resident=resident)

    @property
    def num_blocks(self) -> int:
        """How many blocks the cache holds."""
        return int((self._shard >= 0).sum())

    def check_covers(self, blocks: list[int]) -> None:
        missing = [b for b in blocks if b >= len(self._shard) or self._shard[b] < 0]
        if missing:
            raise PotstillError(
                f"the teacher cache holds {self.num_blocks} blocks but training needs "
                f"{len(missing)} more (e.g. block {missing[0]}): teach with the same train "
                "settings, or with teach.blocks=all"
            )

    def outputs(self, batch: Batch, request: SignalRequest) -> TeacherOutputs:
        """The cached teacher outputs for ``batch`` (a `TeacherSource`, keyed by
        ``batch.index``); a request for a field the cache does not hold is refused."""
        if request.attention_layers:
            raise PotstillError(
                "the teacher cache holds no attention maps, but a loss term asks for them: "
                "set teach.enabled=false to run the teacher live"
            )
        kept = self.manifest.hidden_layers
        missing = [layer for layer in request.hidden_layers if layer not in kept]
        if missing:
            raise PotstillError(
                f"the teacher cache keeps the hidden states of layers {list(kept)}, but a loss "
                f"term asks for layers {missing}: teach the cache again for this recipe"
            )
        fields = {"hidden"} if request.hidden_layers else set()
        if request.distributions:
            fields |= {"ids", "logprobs", "tail"}
        found = self._gather(batch.index, fields)
        signal = None
        if request.distributions:
            signal = SparseSignal(
                found["ids"], found["logprobs"], found["tail"], self.manifest.temperature
            )
        states = {}
        if request.hidden_layers:
            block = found["hidden"]  # (B, P, layers, H) float16
            states = {
                layer: block[:, :, kept.index(layer)].float() for layer in request.hidden_layers
            }
        return TeacherOutputs(signal, states)

    def block_entropy(self, blocks: Sequence[int]) -> torch.Tensor:
        """The teacher's mean next-token entropy (nats) over each of ``blocks``, from the
        cached distribution: the stored ids, plus the tail mass spread evenly over the
        other ids (a sampled cache has no tail: its estimate's entropy). ``(len(blocks),)``
        float32; a curriculum's difficulty (`potstill.train.curriculum`)."""
        index = torch.as_tensor(list(blocks), dtype=torch.long)
        self.check_covers(index.tolist())
        parts = []
        for start in range(0, len(index), 64):  # a shard's worth at a time
            signal = self.signal(index[start : start + 64])
            logp = signal.logprobs.double()  # (B, P, K), −inf in unused slots
            p = logp.exp()
            stored = -(p * torch.where(p > 0, logp, 0.0)).sum(-1)  # (B, P)
            tail = signal.tail_logprob.double()  # (B, P)
            others = max(self.manifest.vocab_size - logp.shape[-1], 1)
            spread = torch.where(tail > -math.inf, -tail.exp() * (tail - math.log(others)), 0.0)
            parts.append((stored + spread).mean(-1).float())
        return torch.cat(parts) if parts else torch.zeros(0)

    def signal(self, block_index: torch.Tensor) -> SparseSignal:
        """The cached signal of training blocks ``block_index``: ``(B, block_size − 1, …)``."""
        found = self._gather(block_index, {"ids", "logprobs", "tail"})
        return SparseSignal(
            found["ids"], found["logprobs"], found["tail"], temperature=self.manifest.temperature
        )

    def _gather(self, block_index: torch.Tensor, fields: set[str]) -> dict[str, torch.Tensor]:
        """``fields`` of blocks ``block_index``, stacked in its order."""
        index = block_index.cpu().long()
        self.check_covers(index.tolist())
        shards, rows = self._shard[index], self._row[index]
        parts: dict[str, torch.Tensor] = {}
        last = None
        for shard in dict.fromkeys(shards.tolist()):
            decoded = self._get(shard)
            mine = (shards == shard).nonzero().squeeze(1)
            for name in fields:
                values = getattr(decoded, name)
                if values is None:
                    continue
                if name not in parts:
                    parts[name] = values.new_empty((len(index), *values.shape[1:]))
                parts[name][mine] = values[rows[mine]]
            last = shard
        if last is not None and last in self._next:
            self._read_ahead(self._next[last])
        return parts

    def _get(self, shard: int) -> _Decoded:
        """Shard ``shard`` decoded: kept, read ahead, or decoded now."""
        if shard in self._decoded:
            self._decoded.move_to_end(shard)
            return self._decoded[shard]
        pending = self._pending.pop(shard, None)
        decoded = pending.result() if pending is not None else self._decode(shard)
        self._decoded[shard] = decoded
        while len(self._decoded) > self.resident:
            self._decoded.popitem(last=False)
        return decoded

    def _read_ahead(self, shard: int) -> None:
        if shard in self._decoded or shard in self._pending:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-read")
        self._pending[shard] = self._pool.submit(self._decode, shard)

    def _decode(self, shard: int) -> _Decoded:
        entry = self.manifest.shards[shard]
        path = self.directory / entry.fields.top_k.file
        try:
            ids, logprobs, tail = codec.decode(path.read_bytes())
        except ValueError as e:
            raise PotstillError(
                f"teacher cache shard {path} does not decode ({e}): rerun `potstill teach "
                "RECIPE` to teach its blocks again"
            ) from None
        shape = (len(entry.blocks), self.manifest.positions)
        if ids.shape[0] != shape[0] * shape[1]:
            raise PotstillError(
                f"teacher cache shard {path} holds {ids.shape[0]} tokens, its manifest entry "
                f"says {shape[0] * shape[1]}"
            )
        k = ids.shape[1]
        hidden = None
        if self.manifest.fields.hidden is not None:
            with self._lock:
                hidden = _read_hidden(self.directory, entry, self.manifest, self._bases)
        return _Decoded(
            torch.from_numpy(ids.astype(np.int32)).reshape(*shape, k),
            torch.from_numpy(logprobs.astype(np.float32)).reshape(*shape, k),
            torch.from_numpy(tail.astype(np.float32)).reshape(shape),
            hidden,
        )

    def summary(self) -> dict[str, Any]:
        """The numbers a report shows about the cache."""
        m = self.manifest
        return {
            "top_k": m.top_k,
            "samples": m.samples,
            "temperature": m.temperature,
            "bits": m.bits,
            "tokens": m.tokens,
            "bytes": m.bytes,
            "bytes_per_token": m.bytes_per_token,
            "reconstruction_kl_mean": m.reconstruction_kl_mean,
            "tail_mass_mean": m.tail_mass_mean,
        }
