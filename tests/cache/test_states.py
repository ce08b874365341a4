"""Compact hidden states (`potstill.cache.states`): a fitted basis, coded coefficients."""

from __future__ import annotations

import numpy as np
import pytest

from potstill.cache.states import Basis, decode_states, encode_states, fit_basis

WIDTH, LAYERS = 48, 2


def residual_like(n: int, seed: int) -> np.ndarray:
    """``(n, LAYERS, WIDTH)`` float32 states with a falling spectrum, an offset and, like a
    residual stream, one huge dimension on a few positions."""
    rng = np.random.default_rng(seed)
    mixing = np.linalg.qr(np.random.default_rng(99).standard_normal((WIDTH, WIDTH)))[0]
    spread = np.geomspace(20.0, 0.05, WIDTH)
    states = rng.standard_normal((n, LAYERS, WIDTH)) * spread @ mixing + 3.0
    states[:: max(n // 4, 1), :, 5] += 400.0
    return states.astype(np.float32)


def relative_error(original: np.ndarray, decoded: np.ndarray) -> float:
    """Mean over positions and layers of ‖ĥ − h‖² / ‖h‖², in float64."""
    h, g = original.astype(np.float64), decoded.astype(np.float64)
    return float((((g - h) ** 2).sum(-1) / (h**2).sum(-1)).mean())


@pytest.mark.parametrize("error", [0.003, 0.02, 0.1])
def test_the_fitted_step_meets_the_target_error_on_the_fitting_states(error):
    states = residual_like(2000, 0)
    basis = fit_basis(states, error)
    payload, measured = encode_states(states, basis)
    decoded = decode_states(payload, basis)
    assert decoded.shape == states.shape and decoded.dtype == np.float32
    assert measured == pytest.approx(relative_error(states, decoded), rel=1e-4)
    assert measured == pytest.approx(error, rel=0.1)
    # Other text of the same kind is coded about as well.
    other = residual_like(500, 1)
    payload, measured_other = encode_states(other, basis)
    assert relative_error(other, decode_states(payload, basis)) == pytest.approx(
        measured_other, rel=1e-4
    )
    assert measured_other < 2 * error


def test_decoding_equals_an_independent_reconstruction_in_float64():
    states = residual_like(600, 2)
    basis = fit_basis(states, 0.01)
    decoded = decode_states(encode_states(states, basis)[0], basis)
    for layer in range(LAYERS):
        mean = basis.means[layer].astype(np.float64)
        comp = basis.components[layer].astype(np.float64)
        step = basis.steps[layer]
        q = np.round((states[:, layer].astype(np.float64) - mean) @ comp.T / step)
        np.testing.assert_allclose(decoded[:, layer], q * step @ comp + mean, rtol=1e-5, atol=1e-4)


def test_looser_targets_take_fewer_bytes_and_a_tenth_of_float16_is_reachable():
    states = residual_like(4000, 3)
    sizes = [len(encode_states(states, fit_basis(states, e))[0]) for e in (0.001, 0.01, 0.04)]
    assert sizes[0] > sizes[1] > sizes[2]
    float16 = states.size * 2
    assert sizes[2] < 0.1 * float16


def test_the_basis_is_orthonormal_and_round_trips_through_safetensors():
    states = residual_like(800, 4)
    basis = fit_basis(states, 0.01)
    again = Basis.from_bytes(basis.to_bytes())
    for layer in range(LAYERS):
        np.testing.assert_array_equal(again.components[layer], basis.components[layer])
        np.testing.assert_array_equal(again.means[layer], basis.means[layer])
        comp = basis.components[layer].astype(np.float64)
        np.testing.assert_allclose(comp @ comp.T, np.eye(len(comp)), atol=5e-3)  # float16
    assert again.steps == basis.steps


def test_bad_arguments_and_payloads_are_refused():
    states = residual_like(300, 5)
    basis = fit_basis(states, 0.02)
    with pytest.raises(ValueError, match="float32"):
        fit_basis(states.astype(np.float16), 0.02)
    with pytest.raises(ValueError, match=r"\(n, layers, H\)"):
        encode_states(states[:, 0], basis)
    with pytest.raises(ValueError, match="NaN"):
        encode_states(np.where(states > 1e9, 0, np.nan).astype(np.float32), basis)
    for error in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"error must be in \(0, 1\)"):
            fit_basis(states, error)
    with pytest.raises(ValueError, match="1 layers of width 48, the basis 2"):
        encode_states(states[:, :1], basis)
    payload, _ = encode_states(states, basis)
    with pytest.raises(ValueError, match="magic"):
        decode_states(b"XXXX" + payload[4:], basis)
    with pytest.raises(ValueError, match="truncated"):
        decode_states(payload[:-40], basis)
    with pytest.raises(ValueError, match="past its end"):
        decode_states(payload + b"\0\0\0\0", basis)
    other = fit_basis(residual_like(300, 6), 0.2)  # keeps other directions
    with pytest.raises(ValueError, match="directions"):
        decode_states(payload, other)
