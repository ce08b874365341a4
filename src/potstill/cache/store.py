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

`potstill.cache.reader` reads a finished cache (`TeacherCache`).

A format-1 manifest (flat: ``teacher``, ``top_k``, … at the top, one file per shard) is
read as format 2; the next `CacheWriter.open` rewrites it on disk as format 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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
from potstill.util.io import atomic_write_bytes, atomic_write_text, sha256_file

__all__ = [
    "MANIFEST",
    "CacheWriter",
    "Fidelity",
    "Manifest",
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
