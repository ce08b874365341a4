"""Packed blocks on disk: written once, block by block, and read only where a batch asks.

A corpus of hundreds of millions of tokens does not fit a process's memory as int64
tensors (16 bytes a token for ids and labels). `BlockWriter` packs documents as they come
into two int32 files of ``(N, block_size)`` rows, ids and labels; `StoredBlocks` reads the
rows a batch names with ``pread``, so a process holds only its batches (and no pages of a
memory map stay resident as it walks the corpus).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from potstill.data.batch import Batch
from potstill.data.packing import Blocks, TokenizedDoc
from potstill.util.tokens import IGNORE_INDEX

IDS_FILE = "train-ids.bin"
LABELS_FILE = "train-labels.bin"
_ITEM = np.dtype(np.int32).itemsize
_CHUNK_ROWS = 4096  # rows per sequential read: 2 MB at 128 tokens a block


class BlockWriter:
    """Concatenate documents and write them as ``block_size`` rows, as `packing.pack` cuts
    them: the last partial block is dropped, and so is a block with no trainable token.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     w = BlockWriter(Path(d), block_size=2)
    ...     w.add(TokenizedDoc(np.array([5, 6, 7], np.int32), num_masked=0))
    ...     w.add(TokenizedDoc(np.array([8, 9], np.int32), num_masked=2))
    ...     w.close()
    ...     StoredBlocks(Path(d), w.rows, 2).batch(torch.tensor([0, 1])).labels.tolist()
    2
    [[5, 6], [7, -100]]
    """

    def __init__(self, folder: Path, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.rows = 0
        self.tokens = 0  # labelled tokens written
        self._ids = open(folder / IDS_FILE, "wb")  # noqa: SIM115 - closed by close()
        self._labels = open(folder / LABELS_FILE, "wb")  # noqa: SIM115
        self._pending_ids: list[np.ndarray] = []
        self._pending_labels: list[np.ndarray] = []
        self._pending = 0

    def add(self, doc: TokenizedDoc) -> None:
        """Append one document; full blocks go to disk once a few thousand are pending."""
        labels = doc.ids.copy()
        labels[: doc.num_masked] = IGNORE_INDEX
        self._pending_ids.append(doc.ids)
        self._pending_labels.append(labels)
        self._pending += len(doc.ids)
        if self._pending >= _CHUNK_ROWS * self.block_size:
            self._flush()

    def _flush(self) -> None:
        ids = np.concatenate(self._pending_ids)
        labels = np.concatenate(self._pending_labels)
        full = len(ids) // self.block_size * self.block_size
        rows_ids = ids[:full].reshape(-1, self.block_size)
        rows_labels = labels[:full].reshape(-1, self.block_size)
        keep = (rows_labels != IGNORE_INDEX).any(axis=1)
        self._ids.write(np.ascontiguousarray(rows_ids[keep], dtype=np.int32).tobytes())
        self._labels.write(np.ascontiguousarray(rows_labels[keep], dtype=np.int32).tobytes())
        self.rows += int(keep.sum())
        self.tokens += int((rows_labels[keep] != IGNORE_INDEX).sum())
        self._pending_ids, self._pending_labels = [ids[full:]], [labels[full:]]
        self._pending = len(ids) - full

    def close(self) -> int:
        """Write the last full blocks (the partial one is dropped); returns the row count."""
        if self._pending:
            self._flush()
        for f in (self._ids, self._labels):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        return self.rows


class StoredBlocks:
    """The first ``n`` rows of a folder `BlockWriter` wrote: the same interface as `Blocks`
    (``len``, ``num_tokens``, ``batch``, ``chunks``), read from disk as asked."""

    def __init__(self, folder: Path, n: int, block_size: int, num_tokens: int | None = None):
        self.folder = Path(folder)
        self.block_size = block_size
        size = (self.folder / IDS_FILE).stat().st_size
        if size % (block_size * _ITEM) or size // (block_size * _ITEM) < n:
            raise ValueError(
                f"{self.folder / IDS_FILE} holds {size} bytes, not {n} rows of {block_size} "
                "int32 tokens"
            )
        self._n = n
        self._num_tokens = num_tokens

    def __len__(self) -> int:
        return self._n

    @property
    def num_tokens(self) -> int:
        """Tokens that carry a label (not -100)."""
        if self._num_tokens is None:
            counts = (int((labels != IGNORE_INDEX).sum()) for _, labels in self.chunks())
            self._num_tokens = sum(counts)
        return self._num_tokens

    def batch(self, index: torch.Tensor) -> Batch:
        """Rows ``index`` (``(B,)`` long) as a `Batch`, read from disk."""
        if index.dim() != 1 or index.dtype != torch.long:
            raise ValueError(f"index must be (B,) long, got {tuple(index.shape)} {index.dtype}")
        rows = index.tolist()
        if rows and not 0 <= min(rows) <= max(rows) < self._n:
            raise IndexError(f"block index out of range 0..{self._n - 1}: {rows}")
        ids, labels = (self._read_rows(name, rows) for name in (IDS_FILE, LABELS_FILE))
        return Batch.of(ids, labels, index)

    def _read_rows(self, name: str, rows: list[int]) -> torch.Tensor:
        width = self.block_size * _ITEM
        fd = os.open(self.folder / name, os.O_RDONLY)
        try:
            raw = b"".join(os.pread(fd, width, row * width) for row in rows)
        finally:
            os.close(fd)
        array = np.frombuffer(raw, dtype=np.int32).reshape(len(rows), self.block_size)
        return torch.from_numpy(array.astype(np.int64))  # (B, L)

    def _read_range(self, name: str, start: int, count: int) -> torch.Tensor:
        offset = start * self.block_size * _ITEM
        array = np.fromfile(self.folder / name, np.int32, count * self.block_size, offset=offset)
        return torch.from_numpy(array.astype(np.int64).reshape(count, self.block_size))

    def chunks(self, rows: int = _CHUNK_ROWS) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(ids, labels)``, each ``(≤rows, L)`` long, in order over every row."""
        for start in range(0, self._n, rows):
            count = min(rows, self._n - start)
            yield (
                self._read_range(IDS_FILE, start, count),
                self._read_range(LABELS_FILE, start, count),
            )

    def rows(self, start: int, stop: int) -> Blocks:
        """Rows ``start:stop`` in memory, as `Blocks`."""
        if not 0 <= start <= stop <= self._n:
            raise IndexError(f"rows {start}:{stop} out of range 0..{self._n}")
        count = stop - start
        ids, labels = (self._read_range(n, start, count) for n in (IDS_FILE, LABELS_FILE))
        return Blocks(ids, labels)

    def in_memory(self) -> Blocks:
        """Every row in memory, as `Blocks`."""
        return self.rows(0, self._n)
