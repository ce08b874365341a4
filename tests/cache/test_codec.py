"""The cache codec: ids exact, log-probabilities within the bound, corrupt payloads refused."""

from __future__ import annotations

import numpy as np
import pytest

from potstill.cache import codec

V, K = 50, 8


def top_k(logits: np.ndarray, k: int):
    """float64 teacher ``(n, V)`` log-probabilities, its top-k ``ids`` and ``logprobs``
    ``(n, k)`` and the ``tail`` ``(n,)``, summed outside the k ids (``-inf`` at ``k = V``)."""
    full = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # (n, V)
    ids = np.argsort(-full, axis=1)[:, :k]  # (n, k)
    logprobs = np.take_along_axis(full, ids, axis=1)
    outside = np.ones_like(full, bool)
    np.put_along_axis(outside, ids, False, axis=1)
    with np.errstate(divide="ignore"):
        tail = np.log(np.where(outside, np.exp(full), 0.0).sum(axis=1))  # (n,)
    return full, ids, logprobs, tail


def make_signal(seed: int, n: int = 40, k: int = K, vocab: int = V, scale: float = 3.0):
    """`top_k` of Gaussian logits."""
    return top_k(np.random.default_rng(seed).standard_normal((n, vocab)) * scale, k)


def by_id(ids: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row sorted by id, log-probabilities carried along: order within a row is free."""
    order = np.argsort(ids, axis=1)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(logprobs, order, axis=1)


def round_trip(ids, logprobs, tail, vocab=V, bits=codec.DEFAULT_BITS):
    return codec.decode(codec.encode(ids, logprobs, tail, vocab_size=vocab, bits=bits))


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 5, 8, 12, 16])
@pytest.mark.parametrize(("k", "vocab"), [(1, 5), (K, V), (30, V), (64, 1000)])
def test_ids_exact_and_logprobs_within_the_bound(bits, k, vocab):
    _, ids, logprobs, tail = make_signal(bits + k, k=k, vocab=vocab)
    got_ids, got_logprobs, got_tail = round_trip(ids, logprobs, tail, vocab, bits)
    assert got_ids.dtype == np.int32
    assert got_logprobs.dtype == got_tail.dtype == np.float32
    assert got_ids.shape == got_logprobs.shape == ids.shape and got_tail.shape == tail.shape
    want_ids, want_logprobs = by_id(ids, logprobs)
    got_ids, got_logprobs = by_id(got_ids, got_logprobs)
    np.testing.assert_array_equal(got_ids, want_ids)
    bound = codec.max_logprob_error(bits)
    assert np.abs(got_logprobs - want_logprobs).max() <= bound
    assert np.abs(got_tail - tail).max() <= bound


def test_the_bound_is_half_a_step_and_shrinks_with_bits():
    bounds = [codec.max_logprob_error(b) for b in range(codec.MIN_BITS, codec.MAX_BITS + 1)]
    assert bounds == sorted(bounds, reverse=True)
    assert codec.max_logprob_error(8) == pytest.approx(32 / 255 / 2, rel=1e-4)


def test_tail_round_trips_including_minus_inf():
    _, ids, logprobs, tail = make_signal(3)
    tail[::3] = -np.inf
    _, _, got_tail = round_trip(ids, logprobs, tail)
    assert np.isneginf(got_tail[::3]).all()
    assert np.isfinite(np.delete(got_tail, np.s_[::3])).all()
    finite = np.isfinite(tail)
    assert np.abs(got_tail[finite] - tail[finite]).max() <= codec.max_logprob_error(8)


def test_full_vocabulary_has_an_empty_tail_and_zero_kl():
    full, ids, logprobs, tail = make_signal(4, k=V)
    assert np.isneginf(tail).all()
    got_ids, got_logprobs, got_tail = round_trip(ids, logprobs, tail)
    assert np.isneginf(got_tail).all()
    np.testing.assert_array_equal(np.sort(got_ids, axis=1), np.tile(np.arange(V), (len(ids), 1)))
    assert codec.reconstruction_kl(full, ids, logprobs, tail).max() < 1e-12
    assert codec.reconstruction_kl(full, got_ids, got_logprobs, got_tail).max() < 1e-2


def test_zero_rows():
    ids, logprobs, tail = round_trip(np.zeros((0, K), int), np.zeros((0, K)), np.zeros(0))
    assert ids.shape == logprobs.shape == (0, K) and tail.shape == (0,)


def test_out_of_range_logprobs_clamp_to_the_grid():
    ids = np.array([[0, 1, 2]])
    logprobs = np.array([[1e-7, -100.0, -np.inf]])  # float noise above 0, far below the floor
    _, got, _ = round_trip(ids, logprobs, np.array([-np.inf]))
    np.testing.assert_array_equal(got, [[0.0, codec.LOGPROB_FLOOR, codec.LOGPROB_FLOOR]])


def test_order_within_a_row_does_not_change_the_payload():
    _, ids, logprobs, tail = make_signal(5)
    shuffle = np.random.default_rng(0).permuted(np.tile(np.arange(K), (len(ids), 1)), axis=1)
    shuffled = (np.take_along_axis(a, shuffle, axis=1) for a in (ids, logprobs))
    assert codec.encode(*shuffled, tail, vocab_size=V) == codec.encode(
        ids, logprobs, tail, vocab_size=V
    )


def test_a_skewed_teacher_compresses_below_raw_storage():
    """Zipf-like logits: frequent ids are kept often, as with a real teacher."""
    n, k, vocab = 200, 32, 2000
    rng = np.random.default_rng(6)
    logits = -1.5 * np.log(np.arange(1, vocab + 1)) + rng.gumbel(size=(n, vocab))  # (n, V)
    _, ids, logprobs, tail = top_k(logits, k)
    payload = codec.encode(ids, logprobs, tail, vocab_size=vocab)
    assert len(payload) < n * k * 2  # under 16-bit ids alone, log-probabilities included


# --- bad inputs and corrupt payloads --------------------------------------------------------


def bad_inputs():
    _, ids, logprobs, tail = make_signal(7, n=4)
    dup = ids.copy()
    dup[2, 1] = dup[2, 0]
    nan = logprobs.copy()
    nan[1, 1] = np.nan
    return {
        "logprobs shape": (ids, logprobs[:, :-1], tail, V, 8, "expected ids"),
        "tail shape": (ids, logprobs, tail[:-1], V, 8, "expected ids"),
        "1-d ids": (ids[0], logprobs[0], tail[:1], V, 8, "expected ids"),
        "id too big": (np.where(ids == ids[0, 0], V, ids), logprobs, tail, V, 8, "ids must be in"),
        "negative id": (ids - ids.max(), logprobs, tail, V, 8, "ids must be in"),
        "float ids": (ids.astype(float), logprobs, tail, V, 8, "integers"),
        "duplicate id": (dup, logprobs, tail, V, 8, "row 2 repeats"),
        "k > V": (ids, logprobs, tail, K - 1, 8, "k must be in"),
        "bits too few": (ids, logprobs, tail, V, 1, "bits must be in"),
        "bits too many": (ids, logprobs, tail, V, 17, "bits must be in"),
        "nan logprob": (ids, nan, tail, V, 8, "NaN"),
        "+inf tail": (ids, logprobs, np.full_like(tail, np.inf), V, 8, "tail_logprob"),
    }


@pytest.mark.parametrize("case", bad_inputs().keys())
def test_bad_inputs_raise(case):
    ids, logprobs, tail, vocab, bits, message = bad_inputs()[case]
    with pytest.raises(ValueError, match=message):
        codec.encode(ids, logprobs, tail, vocab_size=vocab, bits=bits)


def corruptions():
    _, ids, logprobs, tail = make_signal(8)
    payload = codec.encode(ids, logprobs, tail, vocab_size=V)
    head = codec._HEADER.size
    tables = codec._HEADER.unpack_from(payload)[7]
    body = head + tables
    flipped = bytearray(payload)
    flipped[body + 5] ^= 0x40
    return {
        "empty": (b"", "truncated"),
        "half a header": (payload[: head // 2], "truncated"),
        "one byte short": (payload[:-1], "its header says"),
        "one word short": (payload[:-4], "its header says"),
        "one byte more": (payload + b"\0", "its header says"),
        "wrong magic": (b"NOPE" + payload[4:], "magic"),
        "future version": (payload[:4] + b"\x09\x00" + payload[6:], "format 9"),
        "garbage": (np.random.default_rng(0).bytes(len(payload)), "magic"),
        "garbage tables": (payload[:head] + bytes(tables) + payload[body:], "corrupt"),
        "zeroed words": (payload[:body] + bytes(len(payload) - body), "corrupt"),
        "flipped bit": (bytes(flipped), "corrupt"),
    }


@pytest.mark.parametrize("case", corruptions().keys())
def test_truncated_or_corrupt_payload_raises(case):
    payload, message = corruptions()[case]
    with pytest.raises(ValueError, match=message):
        codec.decode(payload)


# --- reconstruction KL ----------------------------------------------------------------------


def ref_reconstruction_kl(full, ids, logprobs, tail):
    """float64, one token at a time: ``q`` = the k probabilities, the tail spread evenly."""
    out = []
    for row in range(len(full)):
        p = np.exp(full[row]) / np.exp(full[row]).sum()
        q = np.full(full.shape[1], np.exp(np.float64(tail[row])) / (full.shape[1] - ids.shape[1]))
        q[ids[row]] = np.exp(logprobs[row].astype(np.float64))
        q /= q.sum()
        out.append(np.sum(p * np.log(p / q)))
    return np.array(out)


@pytest.mark.parametrize("bits", [3, 8])
def test_reconstruction_kl_matches_the_hand_computation(bits):
    full, ids, logprobs, tail = make_signal(9, n=12)
    decoded = round_trip(ids, logprobs, tail, bits=bits)
    got = codec.reconstruction_kl(full, *decoded)
    assert got.dtype == np.float64 and got.shape == (12,)
    np.testing.assert_allclose(got, ref_reconstruction_kl(full, *decoded), rtol=1e-9, atol=1e-14)


def test_reconstruction_kl_is_zero_when_the_tail_is_uniform():
    full, ids, logprobs, tail = make_signal(10, n=6)
    outside = np.ones_like(full, bool)
    np.put_along_axis(outside, ids, False, axis=1)
    full = np.where(outside, tail[:, None] - np.log(V - K), full)  # the same total mass
    assert codec.reconstruction_kl(full, ids, logprobs, tail).max() < 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_reconstruction_kl_is_never_negative(seed):
    full, ids, logprobs, tail = make_signal(seed, k=1 + 7 * seed, scale=0.5 + seed)
    for bits in (2, 6, 16):
        decoded = round_trip(ids, logprobs, tail, bits=bits)
        assert (codec.reconstruction_kl(full, *decoded) >= 0).all()
    assert (codec.reconstruction_kl(full, ids, logprobs, tail) >= 0).all()


def test_reconstruction_kl_is_infinite_when_the_cache_drops_real_mass():
    full, ids, logprobs, _ = make_signal(11, n=3)
    assert np.isposinf(codec.reconstruction_kl(full, ids, logprobs, np.full(3, -np.inf))).all()
