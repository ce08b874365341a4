"""Reading a finished teacher cache: `TeacherCache`, a teacher whose signal comes from disk.

Loading verifies every shard's files (size, sha256, `store.shard_problem`) and payload
header, and decodes nothing. A batch decodes the shards its blocks are in, while the next
shard in teaching order (the order training visits blocks) is decoded on a background
thread; as many decoded shards are kept as fit in ``teach.cache_memory_mb`` (at least
two), least recently used dropped first, so a cache larger than memory streams.
"""

from __future__ import annotations

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
    SOURCE_FIELDS,
    Manifest,
    Shard,
    check_codec,
    check_source,
    read_manifest,
)
from potstill.cache.store import shard_problem
from potstill.data.batch import Batch
from potstill.signals import SignalRequest, SparseSignal, TeacherOutputs
from potstill.util.errors import PotstillError

DEFAULT_MEMORY_MB = 1024.0  # teach.cache_memory_mb


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
        self._id_map: torch.Tensor | None = None

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

    def read_ids_as(self, mapping: torch.Tensor) -> None:
        """From now on hand out every stored id ``i`` as ``mapping[i]``: a cache taught
        across tokenizers read in the student's ids (`potstill.data.vocab.shared_ids`, -1
        where the student has no such token; `potstill.losses.shared`).

        Args:
            mapping: ``(vocab_size,)`` int64, the manifest's ``vocab_size`` entries.
        """
        if mapping.dtype != torch.int64 or tuple(mapping.shape) != (self.manifest.vocab_size,):
            raise ValueError(
                f"mapping must be int64 ({self.manifest.vocab_size},), one entry per stored "
                f"id, got {mapping.dtype} {tuple(mapping.shape)}"
            )
        if len(mapping) and int(mapping.min()) < -1:
            raise ValueError(f"mapping holds ids or -1, got {int(mapping.min())}")
        self._id_map = mapping.cpu()

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
        if self._id_map is not None and "ids" in parts:
            parts["ids"] = self._id_map[parts["ids"].long()]
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
