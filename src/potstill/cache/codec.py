"""The on-disk format of a teacher cache shard: top-k ids, log-probabilities and tails.

Per token the teacher keeps ``k`` distinct ids, their log-probabilities and the log of the
mass outside them. One payload holds ``n`` tokens and is entropy coded with ANS
(`constriction`), using static models whose histograms travel in the payload:

- **ids, lossless.** Ids are renamed to their rank by frequency in the payload (a table of
  per-id counts is stored), so the ids a teacher keeps proposing get small numbers. A row's
  ``k`` ranks are sorted (the order of a token's entries means nothing to the losses) and
  stored as gaps; a gap is coded as its bit length, in the context of the bit length of the
  previous rank (gaps are short among frequent ids, long among rare ones), plus its lower
  bits verbatim.
- **log-probabilities, quantized.** ``bits`` bits on a uniform grid over
  ``[LOGPROB_FLOOR, 0]``; values below the floor (``p < e^-32``, under float32's resolution
  next to a mass of 1) are clamped to it. A row stores its smallest value, and its entries
  as steps above it: log-probabilities crowd near the k-th one, whatever its level.
- **tail, quantized** on the same grid, plus one extra symbol for ``-inf`` (no mass
  outside the k ids, e.g. ``k = V``), which decodes exactly.

Layout: a fixed header (`_HEADER`: magic, format version, bits, n, k, vocabulary size and
section lengths), the zlib-compressed model histograms, then the ANS words (little-endian
uint32). At V = 49,152, k = 64 and 8 bits a token takes about 88 bytes on SmolLM2 text.
"""

from __future__ import annotations

import struct
import zlib

import constriction
import numpy as np

MAGIC = b"PTKC"  # potstill top-k cache
VERSION = 1
LOGPROB_FLOOR = -32.0
DEFAULT_BITS = 8
MIN_BITS, MAX_BITS = 2, 16
_MAX_ROWS = (1 << 24) - 1  # keeps counts' verbatim bits under constriction's 2^24

# magic, version, bits, reserved, n, k, vocab_size, tables bytes, ANS words
_HEADER = struct.Struct("<4sHBBIIIII")

_ans = constriction.stream.stack
_model = constriction.stream.model


def max_logprob_error(bits: int) -> float:
    """The most a decoded log-probability (or finite tail) differs from one in range.

    Half a step of the ``bits``-bit grid on ``[LOGPROB_FLOOR, 0]``, plus float32 rounding of
    the decoded value. Values below the floor decode to the floor.

    >>> round(max_logprob_error(8), 4)
    0.0627
    """
    _check_bits(bits)
    return -LOGPROB_FLOOR / (2**bits - 1) / 2 + 2.0**-19


def encode(
    ids: np.ndarray,
    logprobs: np.ndarray,
    tail_logprob: np.ndarray,
    *,
    vocab_size: int,
    bits: int = DEFAULT_BITS,
) -> bytes:
    """One self-describing payload for ``n`` tokens of top-k teacher signal.

    Args:
        ids: ``(n, k)`` integer ids in ``[0, vocab_size)``, distinct within a row.
        logprobs: ``(n, k)`` log-probabilities of those ids, aligned with ``ids``.
        tail_logprob: ``(n,)`` log of the mass outside the k ids; ``-inf`` for none.
        vocab_size: the teacher's vocabulary size ``V``, ``k <= V``.
        bits: log-probability quantization, in ``[2, 16]``.

    >>> payload = encode(np.array([[2, 0]]), np.log([[0.5, 0.3]]), np.log([0.2]), vocab_size=3)
    >>> ids, logprobs, tail = decode(payload)
    >>> ids.tolist(), np.exp(np.float64(logprobs)).round(3).tolist(), np.exp(tail).round(3)
    ([[0, 2]], [[0.285, 0.471]], array([0.196], dtype=float32))
    """
    _check_bits(bits)
    ids, logprobs, tail_logprob = _checked(ids, logprobs, tail_logprob, vocab_size)
    n, k = ids.shape
    if n == 0:
        return _HEADER.pack(MAGIC, VERSION, bits, 0, 0, k, vocab_size, 0, 0)

    # ids -> ranks by frequency in this payload, each row sorted by rank
    counts = np.bincount(ids.ravel(), minlength=vocab_size)  # (V,)
    rank_of = np.empty(vocab_size, np.int64)
    rank_of[np.argsort(-counts, kind="stable")] = np.arange(vocab_size)
    ranks = rank_of[ids]  # (n, k)
    order = np.argsort(ranks, axis=1)
    ranks = np.take_along_axis(ranks, order, axis=1)
    gaps = np.diff(ranks, axis=1, prepend=-1) - 1  # (n, k)
    if (gaps < 0).any():
        row = int(np.nonzero((gaps < 0).any(axis=1))[0][0])
        raise ValueError(f"ids must be distinct within a row; row {row} repeats an id")
    contexts = _bit_length(ranks - gaps)  # bit length of previous rank + 1, (n, k)

    levels = 2**bits - 1
    quantized = _quantize(np.take_along_axis(logprobs, order, axis=1), levels)  # (n, k)
    lowest = quantized.max(axis=1)  # (n,) the smallest log-probability of each row
    offsets = lowest[:, None] - quantized  # (n, k)
    tail = np.where(np.isneginf(tail_logprob), levels + 1, _quantize(tail_logprob, levels))

    count_lengths, gap_lengths = _bit_length(np.array([n, vocab_size])) + 1
    count_hist = _histogram(_bit_length(counts), count_lengths)
    gap_hist = _histogram(contexts * gap_lengths + _bit_length(gaps), gap_lengths**2)
    gap_hist = gap_hist.reshape(gap_lengths, gap_lengths)  # (context, bit length)
    lowest_hist, offset_hist = _histogram(lowest, levels + 1), _histogram(offsets, levels + 1)
    tail_hist = _histogram(tail, levels + 2)

    # ANS is a stack: push in the reverse of the order `decode` pops
    coder = _ans.AnsCoder()
    coder.encode_reverse(tail.astype(np.int32), _categorical(tail_hist))
    coder.encode_reverse(offsets.ravel().astype(np.int32), _categorical(offset_hist))
    coder.encode_reverse(lowest.astype(np.int32), _categorical(lowest_hist))
    for column in reversed(range(k)):
        _push_lengths(coder, gaps[:, column], gap_hist[contexts[:, column]])
    _push_lengths(coder, counts, count_hist)
    words = coder.get_compressed().astype("<u4")

    hists = [count_hist, gap_hist.ravel(), lowest_hist, offset_hist, tail_hist]
    tables = zlib.compress(np.concatenate(hists).astype("<u4").tobytes())
    header = _HEADER.pack(MAGIC, VERSION, bits, 0, n, k, vocab_size, len(tables), len(words))
    return header + tables + words.tobytes()


HEADER_BYTES = _HEADER.size


def header_tokens(head: bytes) -> int:
    """The number of tokens a payload beginning with ``head`` (at least `HEADER_BYTES`)
    holds, after checking its magic, version and fields; ValueError if it is not one."""
    if len(head) < _HEADER.size:
        raise ValueError(f"truncated cache payload: {len(head)} bytes, not even a header")
    magic, version, bits, reserved, n, k, vocab_size, _, _ = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ValueError(f"not a potstill top-k cache payload (magic {magic!r})")
    if version != VERSION:
        raise ValueError(f"cache payload format {version}; this potstill reads format {VERSION}")
    if reserved or not MIN_BITS <= bits <= MAX_BITS or not 1 <= k <= vocab_size or n > _MAX_ROWS:
        raise ValueError(f"corrupt cache payload header (n={n}, k={k}, V={vocab_size})")
    return n


def decode(payload: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ids, log-probabilities and tails an `encode` payload holds.

    Returns:
        ``(ids, logprobs, tail_logprob)``: ``(n, k)`` int32 (each row sorted by the
        payload's frequency ranks, not by id), ``(n, k)`` float32 aligned with them, and
        ``(n,)`` float32.

    Raises:
        ValueError: the payload is not one, is truncated, or is corrupt.
    """
    header_tokens(payload)
    _, _, bits, _, n, k, vocab_size, table_bytes, word_count = _HEADER.unpack_from(payload)
    expected = _HEADER.size + table_bytes + 4 * word_count
    if len(payload) != expected:
        raise ValueError(f"cache payload is {len(payload)} bytes, its header says {expected}")
    if n == 0:
        empty = np.zeros((0, k), np.float32)
        return empty.astype(np.int32), empty, np.zeros(0, np.float32)
    try:
        return _decode_body(payload, bits, n, k, vocab_size, table_bytes)
    except (ValueError, IndexError, zlib.error, RuntimeError) as e:
        raise ValueError(f"corrupt cache payload: {e}") from e


def _decode_body(
    payload: bytes, bits: int, n: int, k: int, vocab_size: int, table_bytes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    levels = 2**bits - 1
    count_lengths, gap_lengths = _bit_length(np.array([n, vocab_size])) + 1
    start = _HEADER.size
    flat = np.frombuffer(zlib.decompress(payload[start : start + table_bytes]), "<u4")
    sizes = [count_lengths, gap_lengths**2, levels + 1, levels + 1, levels + 2]
    if flat.size != sum(sizes):
        raise ValueError(f"model tables hold {flat.size} counts, expected {sum(sizes)}")
    count_hist, gap_hist, lowest_hist, offset_hist, tail_hist = np.split(
        flat.astype(np.int64), np.cumsum(sizes)[:-1]
    )
    gap_hist = gap_hist.reshape(gap_lengths, gap_lengths)  # (context, bit length)

    coder = _ans.AnsCoder(np.frombuffer(payload, "<u4", offset=start + table_bytes).copy())
    counts = _pop_lengths(coder, count_hist, vocab_size)  # (V,)
    id_of_rank = np.argsort(-counts, kind="stable")  # (V,)
    ranks = np.empty((n, k), np.int64)
    previous = np.full(n, -1, np.int64)
    for column in range(k):
        contexts = _bit_length(previous + 1)  # (n,)
        previous = previous + 1 + _pop_lengths(coder, gap_hist[contexts], n)
        if previous.max() >= vocab_size:
            raise ValueError("an id rank falls outside the vocabulary")
        ranks[:, column] = previous
    lowest = coder.decode(_categorical(lowest_hist), n).astype(np.int64)  # (n,)
    offsets = coder.decode(_categorical(offset_hist), n * k).reshape(n, k)
    tail = coder.decode(_categorical(tail_hist), n).astype(np.int64)  # (n,)
    if not coder.is_empty():
        raise ValueError("data left over after the last token")

    ids = id_of_rank[ranks].astype(np.int32)  # (n, k)
    if not np.array_equal(np.bincount(ids.ravel(), minlength=vocab_size), counts):
        raise ValueError("the decoded ids disagree with the id counts")
    step = LOGPROB_FLOOR / levels
    logprobs = ((lowest[:, None] - offsets) * step).astype(np.float32)  # (n, k)
    tail_logprob = np.where(tail > levels, -np.inf, tail * step).astype(np.float32)  # (n,)
    if (offsets > lowest[:, None]).any() or (lowest > levels).any():
        raise ValueError("a log-probability falls outside the quantization grid")
    return ids, logprobs, tail_logprob


def reconstruction_kl(
    full_logprobs: np.ndarray,
    ids: np.ndarray,
    logprobs: np.ndarray,
    tail_logprob: np.ndarray,
) -> np.ndarray:
    """``KL(teacher ‖ cache)`` per token, in nats, float64.

    The cache's distribution ``q`` puts ``exp(logprobs)`` on the k ids and spreads the tail
    mass evenly over the other ``V − k`` ids; both ``p`` and ``q`` are renormalised to sum
    to 1 (quantization leaves ``q`` a little off).

    Args:
        full_logprobs: ``(n, V)`` the teacher's full log-probabilities ``p``.
        ids: ``(n, k)`` kept ids; ``logprobs``: ``(n, k)`` their log-probabilities;
            ``tail_logprob``: ``(n,)`` the log mass outside them.

    >>> full = np.log([[0.5, 0.3, 0.1, 0.1]])
    >>> reconstruction_kl(full, np.array([[0, 1]]), full[:, :2], np.log([0.2])).round(6)
    array([0.])
    """
    full_logprobs = np.asarray(full_logprobs)
    ids, logprobs, tail_logprob = np.asarray(ids), np.asarray(logprobs), np.asarray(tail_logprob)
    if full_logprobs.ndim != 2 or ids.shape != (full_logprobs.shape[0], ids.shape[-1]):
        raise ValueError(f"full_logprobs {full_logprobs.shape} and ids {ids.shape} disagree")
    if logprobs.shape != ids.shape or tail_logprob.shape != ids.shape[:1]:
        raise ValueError(
            f"ids {ids.shape}, logprobs {logprobs.shape} and tail {tail_logprob.shape} disagree"
        )
    n, vocab_size = full_logprobs.shape
    k = ids.shape[1]
    kl = np.empty(n, np.float64)
    rows = max(1, (1 << 22) // vocab_size)  # ~32 MiB of float64 at a time
    for start in range(0, n, rows):
        chunk = slice(start, start + rows)
        log_p = _log_normalise(full_logprobs[chunk].astype(np.float64))  # (r, V)
        spread = tail_logprob[chunk].astype(np.float64) - np.log(max(vocab_size - k, 1))
        log_q = np.repeat(spread[:, None], vocab_size, axis=1)  # (r, V)
        np.put_along_axis(log_q, ids[chunk].astype(np.int64), logprobs[chunk], axis=1)
        log_q = _log_normalise(log_q)
        p = np.exp(log_p)
        with np.errstate(invalid="ignore"):  # p = 0 terms are 0 whatever q is
            terms = np.where(p > 0, p * (log_p - log_q), 0.0)
        kl[chunk] = terms.sum(axis=1)
    return np.maximum(kl, 0.0)  # float64 rounding can leave -1e-16


def _checked(
    ids: np.ndarray, logprobs: np.ndarray, tail_logprob: np.ndarray, vocab_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, logprobs = np.asarray(ids), np.asarray(logprobs, np.float64)
    tail_logprob = np.asarray(tail_logprob, np.float64)
    if ids.ndim != 2 or logprobs.shape != ids.shape or tail_logprob.shape != ids.shape[:1]:
        raise ValueError(
            f"expected ids (n, k), logprobs (n, k) and tail (n,); got {ids.shape}, "
            f"{logprobs.shape} and {tail_logprob.shape}"
        )
    n, k = ids.shape
    if not 1 <= vocab_size < 1 << 24:
        raise ValueError(f"vocab_size must be in [1, 2^24), got {vocab_size}")
    if not 1 <= k <= vocab_size:
        raise ValueError(f"k must be in [1, vocab_size={vocab_size}], got {k}")
    if n > _MAX_ROWS or n * k >= 1 << 32:
        raise ValueError(f"{n} tokens × k={k} is too much for one payload: split it")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got {ids.dtype}")
    if n and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must be in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")
    if np.isnan(logprobs).any() or np.isposinf(logprobs).any():
        raise ValueError("logprobs must not be NaN or +inf")
    if np.isnan(tail_logprob).any() or np.isposinf(tail_logprob).any():
        raise ValueError("tail_logprob must not be NaN or +inf")
    return ids.astype(np.int64), logprobs, tail_logprob


def _check_bits(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")


def _quantize(logprobs: np.ndarray, levels: int) -> np.ndarray:
    """Grid index of each log-probability: 0 is log 1, ``levels`` is the floor."""
    clamped = np.clip(logprobs, LOGPROB_FLOOR, 0.0)
    return np.rint(clamped * (levels / LOGPROB_FLOOR)).astype(np.int64)


def _bit_length(values: np.ndarray) -> np.ndarray:
    """``int.bit_length`` of each non-negative integer (exact below 2^53)."""
    return np.frexp(values.astype(np.float64))[1].astype(np.int64)


def _histogram(symbols: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(symbols.ravel(), minlength=size)


def _categorical(hist: np.ndarray) -> constriction.stream.model.Categorical:
    return _model.Categorical(hist.astype(np.float64), perfect=False)


def _push_lengths(coder: _ans.AnsCoder, values: np.ndarray, hists: np.ndarray) -> None:
    """Push non-negative integers as bit length (per-value histogram row) + lower bits.

    Args:
        values: ``(m,)`` integers below 2^24; ``hists``: ``(m, L)`` or ``(L,)`` counts.
    """
    lengths = _bit_length(values)
    long = lengths >= 2  # values 0 and 1 are their bit length; the rest add bits
    spans = (1 << (lengths[long] - 1)).astype(np.int32)
    coder.encode_reverse((values[long] - spans).astype(np.int32), _model.Uniform(), spans)
    if hists.ndim == 1:
        coder.encode_reverse(lengths.astype(np.int32), _categorical(hists))
    else:
        family = _model.Categorical(perfect=False)
        coder.encode_reverse(lengths.astype(np.int32), family, hists.astype(np.float64))


def _pop_lengths(coder: _ans.AnsCoder, hists: np.ndarray, m: int) -> np.ndarray:
    """Pop ``m`` values that `_push_lengths` pushed with the same histogram(s)."""
    if hists.ndim == 1:
        lengths = coder.decode(_categorical(hists), m)
    else:
        lengths = coder.decode(_model.Categorical(perfect=False), hists.astype(np.float64))
    lengths = lengths.astype(np.int64)
    long = lengths >= 2
    spans = (1 << (lengths[long] - 1)).astype(np.int32)
    values = lengths.copy()
    values[long] = spans + coder.decode(_model.Uniform(), spans)
    return values


def _log_normalise(logits: np.ndarray) -> np.ndarray:
    """Log-softmax along the last axis, float64; rows of all ``-inf`` stay ``-inf``."""
    top = logits.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
