"""The teacher cache's `manifest.json`: typed, format 2 (format 1 read and upgraded).

See `potstill.cache.store` for the folder it describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator

from potstill.cache import codec
from potstill.util.errors import PotstillError

MANIFEST = "manifest.json"
FORMAT = 2
READS = (1, 2)  # manifest formats this potstill reads; 1 is upgraded to 2 on reading
TOP_K_CODEC = "ptkc"  # `codec`'s payloads (its magic, "PTKC")
TOP_K_CODEC_VERSION = codec.VERSION

# What made a cache, by the name a `Manifest` property and an ``expected`` dict use, with
# the words an error message uses. The first group decides what the signal *means*: a
# cache with any of them different is refused for training. The second only decides its
# resolution; `teach` refuses to extend a cache made with other settings.
SOURCE_FIELDS = {
    "teacher": "teacher",
    "teacher_sha256": "teacher (weights)",
    "tokenizer_sha256": "tokenizer",
    "data_fingerprint": "dataset",
    "block_size": "block size",
    "teacher_tokenizer_sha256": "teacher tokenizer (a cache across tokenizers)",
}
SETTINGS_FIELDS = {
    "vocab_size": "vocabulary size",
    "top_k": "teach.top_k",
    "temperature": "temperature",
    "bits": "teach.bits",
    "samples": "teach.samples",
    "seed": "teach.seed",
    "hidden_layers": "hidden layers kept (the hidden-state loss terms' layer maps)",
    "hidden_error": "teach.hidden_error",
}


class Fidelity(BaseModel):
    """How far the reconstructed distribution is from the teacher's full one.

    Measured on a sample of each shard's tokens, its first block (a full-vocabulary KL
    over every block costs more than half the teacher's own forward pass):
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


class Source(BaseModel):
    """What the cached signal was computed from: a cache serves this source only."""

    model_config = ConfigDict(extra="forbid")
    teacher: str
    teacher_sha256: str
    tokenizer_sha256: str
    data_fingerprint: str
    block_size: int
    vocab_size: int  # the teacher's output rows: what the stored ids index
    # Taught across tokenizers (`potstill.cache.cross_teach`): the teacher's own tokenizer,
    # whose ids the cache holds at the positions aligned by character; None when the data's
    # tokenizer (``tokenizer_sha256``) is the teacher's.
    teacher_tokenizer_sha256: str | None = None

    @model_serializer(mode="wrap")
    def _only_across(self, handler: Any) -> dict[str, Any]:
        """A same-tokenizer cache's source is written as before the field existed."""
        data = handler(self)
        if data.get("teacher_tokenizer_sha256") is None:
            data.pop("teacher_tokenizer_sha256", None)
        return data


class TopK(BaseModel):
    """The ``top_k`` field: per token the teacher's ``k`` likeliest ids, their
    log-probabilities at ``temperature`` quantized to ``bits``, and the tail mass.

    The totals (over every shard, recomputed on every write) are for readers of the JSON.
    """

    model_config = ConfigDict(extra="forbid")
    codec: Literal["ptkc"] = TOP_K_CODEC
    codec_version: int = TOP_K_CODEC_VERSION
    k: int
    temperature: float
    bits: int
    # Draws per token from the mass outside the k ids, at ``seed`` (0: a top-k cache with
    # a tail bucket); a row then holds k + samples slots and no tail.
    samples: int = 0
    seed: int = 0
    bytes: int = 0
    bytes_per_token: float | None = None
    reconstruction_kl_mean: float | None = None
    tail_mass_mean: float | None = None


class Hidden(BaseModel):
    """The ``hidden`` field: the teacher's hidden states at ``layers`` (HF
    ``hidden_states`` indexing) for every position but a block's last, for hidden-state
    loss terms; ``(blocks, positions, len(layers), width)`` as ``float16``, or (``codec``
    ``ptkh``, ``error`` > 0) as `potstill.cache.states` payloads: coefficients in a basis
    fitted while teaching, at mean relative squared error ``error``."""

    model_config = ConfigDict(extra="forbid")
    layers: list[int]
    width: int
    dtype: Literal["float16"] = "float16"  # what the states decode to
    codec: Literal["float16", "ptkh"] = "float16"
    error: float = 0.0  # the target: teach.hidden_error
    bytes: int = 0
    bytes_per_token: float | None = None
    # The mean over the taught positions of the relative squared error each shard measured
    # on its own states (None: float16, or nothing taught yet).
    error_mean: float | None = None


class Fields(BaseModel):
    """One section per field the cache stores."""

    model_config = ConfigDict(extra="forbid")
    top_k: TopK
    hidden: Hidden | None = None


class TopKFile(BaseModel):
    """A shard's ``top_k`` file, and the fidelity measured on a sample of its tokens."""

    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str
    bytes: int
    fidelity: Fidelity


class StoredFile(BaseModel):
    """A shard's file of a field with nothing else to record (``hidden``)."""

    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str
    bytes: int


class HiddenFile(StoredFile):
    """A shard's ``hidden`` file; with the ``ptkh`` codec, the basis file it was coded in
    (shared by the shards one process taught) and the relative squared error measured on
    the shard's own states."""

    basis: StoredFile | None = None
    error: float | None = None


class ShardFields(BaseModel):
    """A shard's file for each field in `Fields`."""

    model_config = ConfigDict(extra="forbid")
    top_k: TopKFile
    hidden: HiddenFile | None = None


class Shard(BaseModel):
    model_config = ConfigDict(extra="forbid")
    blocks: list[int]  # training blocks, in the order their positions are stored
    rank: int = 0  # the process that taught it
    fields: ShardFields

    def files(self) -> list[TopKFile | StoredFile]:
        """Every file of the shard: one per stored field, and the basis its hidden states
        were coded in."""
        hidden = self.fields.hidden
        if hidden is None or hidden.basis is None:
            return self.own_files()
        return [*self.own_files(), hidden.basis]

    def own_files(self) -> list[TopKFile | StoredFile]:
        """The shard's files no other shard shares (not its basis)."""
        hidden = self.fields.hidden
        return [self.fields.top_k, *([hidden] if hidden is not None else [])]


class Manifest(BaseModel):
    """``manifest.json``, format 2.

    Read-only properties (``teacher``, ``block_size``, ``vocab_size``, ``top_k``,
    ``temperature``, ``bits``, …) give one setting without naming its section.
    """

    model_config = ConfigDict(extra="forbid")
    format: Literal[2] = FORMAT
    source: Source
    fields: Fields
    plan: list[int]  # the training blocks the cache is to hold, in teaching order
    shards: list[Shard] = []
    # Totals over the shards and every field, kept for readers of the JSON.
    tokens: int = 0
    bytes: int = 0
    bytes_per_token: float | None = None
    complete: bool = False

    @classmethod
    def new(
        cls,
        source: dict[str, Any],
        *,
        vocab_size: int,
        top_k: int,
        temperature: float,
        bits: int,
        plan: list[int],
        samples: int = 0,
        seed: int = 0,
        hidden_layers: tuple[int, ...] = (),
        width: int = 0,
        hidden_error: float = 0.0,
    ) -> Manifest:
        """An empty cache: what made it (``source``: teacher, teacher_sha256,
        tokenizer_sha256, data_fingerprint, block_size), its ``top_k`` settings, the
        teacher hidden states it keeps (``hidden_layers``, of ``width``) and the blocks
        it is to hold (``hidden_error`` > 0: in a fitted basis, at that relative error)."""
        hidden = None
        if hidden_layers:
            hidden = Hidden(
                layers=sorted(hidden_layers),
                width=width,
                codec="ptkh" if hidden_error > 0 else "float16",
                error=hidden_error,
            )
        return cls(
            source=Source(**source, vocab_size=vocab_size),
            fields=Fields(
                top_k=TopK(k=top_k, temperature=temperature, bits=bits, samples=samples, seed=seed),
                hidden=hidden,
            ),
            plan=plan,
        ).with_totals()

    @model_validator(mode="before")
    @classmethod
    def _upgrade_format_1(cls, data: Any) -> Any:
        """A flat format-1 manifest (``format`` 1 or absent, no ``source``) as format 2."""
        if isinstance(data, dict) and data.get("format", 1) == 1 and "source" not in data:
            return ManifestV1.model_validate(data).upgrade()
        return data

    @property
    def teacher(self) -> str:
        return self.source.teacher

    @property
    def teacher_sha256(self) -> str:
        return self.source.teacher_sha256

    @property
    def tokenizer_sha256(self) -> str:
        return self.source.tokenizer_sha256

    @property
    def data_fingerprint(self) -> str:
        return self.source.data_fingerprint

    @property
    def block_size(self) -> int:
        return self.source.block_size

    @property
    def vocab_size(self) -> int:
        return self.source.vocab_size

    @property
    def teacher_tokenizer_sha256(self) -> str | None:
        return self.source.teacher_tokenizer_sha256

    @property
    def top_k(self) -> int:
        return self.fields.top_k.k

    @property
    def temperature(self) -> float:
        return self.fields.top_k.temperature

    @property
    def bits(self) -> int:
        return self.fields.top_k.bits

    @property
    def samples(self) -> int:
        return self.fields.top_k.samples

    @property
    def seed(self) -> int:
        return self.fields.top_k.seed

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        hidden = self.fields.hidden
        return tuple(hidden.layers) if hidden is not None else ()

    @property
    def hidden_error(self) -> float:
        hidden = self.fields.hidden
        return hidden.error if hidden is not None else 0.0

    def describe(self) -> str:
        """One line for logs: what the cache keeps per token, its size and fidelity."""
        if self.samples:
            kept = f"{self.samples} draws" + (f" beyond the top {self.top_k}" if self.top_k else "")
            fidelity = "an unbiased estimate"
        else:
            kept = f"top {self.top_k}"
            kl = self.reconstruction_kl_mean
            fidelity = "reconstruction KL " + ("-" if kl is None else f"{kl:.4f}")
        hidden = self.fields.hidden
        if hidden is not None:
            kept += f" and the hidden states of layers {hidden.layers}"
            if hidden.error_mean is not None:
                kept += f" (relative error {hidden.error_mean:.3f})"
        size = "-" if self.bytes_per_token is None else f"{self.bytes_per_token:.1f}"
        return (
            f"{self.tokens:,} tokens, {kept} at T={self.temperature:g}, {size} bytes/token, "
            f"{fidelity}"
        )

    @property
    def reconstruction_kl_mean(self) -> float | None:
        return self.fields.top_k.reconstruction_kl_mean

    @property
    def tail_mass_mean(self) -> float | None:
        return self.fields.top_k.tail_mass_mean

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
        tokens = sum(len(s.blocks) for s in self.shards) * self.positions
        files = {f.file: f.bytes for s in self.shards for f in s.files()}  # a basis once
        size = sum(files.values())
        top_k_files = [s.fields.top_k for s in self.shards]
        top_k_size = sum(f.bytes for f in top_k_files)
        fidelity = sum((f.fidelity for f in top_k_files), Fidelity())
        top_k = self.fields.top_k.model_copy(
            update={
                "bytes": top_k_size,
                "bytes_per_token": top_k_size / tokens if tokens else None,
                "reconstruction_kl_mean": fidelity.kl_mean if fidelity.tokens else None,
                "tail_mass_mean": fidelity.tail_mass_mean if fidelity.tokens else None,
            }
        )
        hidden = self.fields.hidden
        if hidden is not None:
            hidden_size = size - top_k_size
            measured = [
                (len(s.blocks), s.fields.hidden.error)
                for s in self.shards
                if s.fields.hidden is not None and s.fields.hidden.error is not None
            ]
            count = sum(n for n, _ in measured)
            hidden = hidden.model_copy(
                update={
                    "bytes": hidden_size,
                    "bytes_per_token": hidden_size / tokens if tokens else None,
                    "error_mean": sum(n * e for n, e in measured) / count if count else None,
                }
            )
        return self.model_copy(
            update={
                "fields": self.fields.model_copy(update={"top_k": top_k, "hidden": hidden}),
                "tokens": tokens,
                "bytes": size,
                "bytes_per_token": size / tokens if tokens else None,
                "complete": not self.remaining(),
            }
        )


class ShardV1(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str
    bytes: int
    blocks: list[int]
    fidelity: Fidelity


class ManifestV1(BaseModel):
    """Format 1: one flat record (potstill before per-field sections). Read, never written."""

    model_config = ConfigDict(extra="forbid")
    format: Literal[1] = 1
    teacher: str
    teacher_sha256: str
    tokenizer_sha256: str
    vocab_size: int
    data_fingerprint: str
    block_size: int
    top_k: int
    temperature: float
    bits: int
    plan: list[int]
    shards: list[ShardV1] = []
    tokens: int = 0
    bytes: int = 0
    bytes_per_token: float | None = None
    complete: bool = False
    reconstruction_kl_mean: float | None = None
    tail_mass_mean: float | None = None

    def upgrade(self) -> dict[str, Any]:
        """The same cache as a format-2 record; its payloads were all `codec` version 1."""
        source = self.model_dump(include=set(SOURCE_FIELDS) | {"vocab_size"})
        top_k = {
            "codec": TOP_K_CODEC,
            "codec_version": 1,
            "k": self.top_k,
            "temperature": self.temperature,
            "bits": self.bits,
            "bytes": self.bytes,
            "bytes_per_token": self.bytes_per_token,
            "reconstruction_kl_mean": self.reconstruction_kl_mean,
            "tail_mass_mean": self.tail_mass_mean,
        }
        shards = [
            {"blocks": s.blocks, "fields": {"top_k": s.model_dump(exclude={"blocks"})}}
            for s in self.shards
        ]
        totals = self.model_dump(include={"tokens", "bytes", "bytes_per_token", "complete"})
        return {
            "source": source,
            "fields": {"top_k": top_k},
            "plan": self.plan,
            "shards": shards,
            **totals,
        }


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest in ``directory`` (format 1 upgraded to 2), or None when there is none;
    a bad one is an error."""
    found = read_with_format(directory)
    return None if found is None else found[0]


def read_with_format(directory: Path) -> tuple[Manifest, int] | None:
    """The manifest and the format it has on disk."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        version = data.get("format") if isinstance(data, dict) else None
        if type(version) is int and version in READS:
            return Manifest.model_validate(data), version
    except (ValidationError, ValueError) as e:
        raise PotstillError(
            f"teacher cache {directory} has an unreadable {MANIFEST} ({type(e).__name__}); "
            "delete the folder and rerun `potstill teach`"
        ) from None
    if type(version) is int:
        raise PotstillError(
            f"teacher cache {directory} has {MANIFEST} format {version}, this potstill reads "
            f"formats {READS[0]} to {READS[-1]}: update potstill, or rerun `potstill teach` "
            "into a new run (name=NEW)"
        )
    raise PotstillError(
        f"teacher cache {directory} has an unreadable {MANIFEST} (no format number); "
        "delete the folder and rerun `potstill teach`"
    )


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


def check_codec(manifest: Manifest, directory: Path) -> None:
    version = manifest.fields.top_k.codec_version
    if version != TOP_K_CODEC_VERSION:
        raise PotstillError(
            f"teacher cache {directory} stores top_k in codec version {version}, this potstill "
            f"reads version {TOP_K_CODEC_VERSION}: rerun `potstill teach` into a new run "
            "(name=NEW)"
        )
