"""An independent float64 reference for the divergences: numpy, written from the papers,
one token at a time. Shared by the dense and the sparse loss tests."""

from __future__ import annotations

import numpy as np


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def ref_divergence(name: str, p: np.ndarray, q: np.ndarray, beta=0.5, alpha=0.1) -> float:
    """The divergence between teacher ``p`` and student ``q``, written from the papers."""
    if name == "forward_kl":
        return np_kl(p, q)
    if name == "reverse_kl":
        return np_kl(q, p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)
    if name == "tvd":
        return 0.5 * float(np.abs(p - q).sum())
    if name == "skew_kl":
        return np_kl(p, alpha * p + (1 - alpha) * q)
    raise KeyError(name)
