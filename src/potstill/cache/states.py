"""Compact teacher hidden states: a fitted basis per layer, entropy-coded coefficients.

Float16 hidden states cost ``2 × width`` bytes per token and layer (1,152 at width 576:
98% of the default cache). Residual streams are far from white: a few directions carry
most of their energy, so they are kept as transform codes (Goyal 2001):

- **A basis per layer**, fitted once on the first shard a process teaches
  (`fit_basis`): the states' mean and the principal directions of the centred states
  (eigenvectors of their covariance, by falling variance), stored in float16 in a
  safetensors file beside the shards, with one quantization ``step`` per layer.
- **Coefficients** ``round((h − mean) · Vᵀ / step)``: one step for every direction, the
  rate-distortion choice for squared error (reverse water-filling: a direction with less
  spread than the step mostly rounds to 0 and costs almost nothing). Directions whose
  spread on the fitting shard is under a quarter step are dropped from the basis.
- **Entropy coding** (`constriction`'s ANS) of each direction's coefficients under a
  discrete Laplace model (``P(k) ∝ ρ^|k|``, ``ρ`` fitted to the direction's mean ``|k|``
  in the shard and stored in 16 bits, with the direction's largest ``|k|``). The model's
  weights are computed in integers, so a cache decodes on any machine.

``step`` is chosen per layer by bisection so that the *relative* squared error
``‖ĥ − h‖² / ‖h‖²`` averaged over the fitting shard's positions is the target ``error``,
the same scale as the ``hidden_mse`` loss (0 = exact, 1 = zeros). Each shard records the
error measured on its own states (`encode_states`), so a basis that fits later text
worse says so in the manifest. On the default teacher (width 576, five layers) a target
of 0.04 keeps about 100 bytes per token and layer, 9% of float16
(bench/results/hidden_states.md).

Payload layout: a header (`_HEADER`: magic, version, layers, positions), then per layer
the kept directions ``r`` and the number of ANS words, ``r`` uint32 ranges, ``r`` uint16
ratios and the ANS words (all little-endian).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import constriction
import numpy as np
import torch
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

MAGIC = b"PTKH"  # potstill hidden states
VERSION = 1
MAX_SYMBOL = (1 << 22) - 1  # constriction's leaky models need the range under 2^24
KEEP_SPREAD = 0.25  # a direction is kept when its spread exceeds this many steps

_HEADER = struct.Struct("<4sHHI")  # magic, version, layers, positions
_LAYER = struct.Struct("<II")  # kept directions, ANS words


@dataclass(frozen=True)
class Basis:
    """Per layer: ``mean`` ``(H,)``, ``components`` ``(r, H)`` (orthonormal rows, in the
    float16 precision they are stored in) and the quantization ``step``."""

    means: list[np.ndarray]
    components: list[np.ndarray]
    steps: list[float]

    @property
    def layers(self) -> int:
        return len(self.means)

    @property
    def width(self) -> int:
        return int(self.means[0].shape[0])

    def to_bytes(self) -> bytes:
        """The basis as a safetensors file."""
        tensors = {}
        for i, (mean, comp) in enumerate(zip(self.means, self.components, strict=True)):
            tensors[f"mean.{i}"] = np.ascontiguousarray(mean, dtype=np.float16)
            tensors[f"components.{i}"] = np.ascontiguousarray(comp, dtype=np.float16)
        tensors["steps"] = np.asarray(self.steps, dtype=np.float64)
        return save_safetensors(tensors, metadata={"format": "potstill-hidden-basis-1"})

    @classmethod
    def from_bytes(cls, data: bytes) -> Basis:
        tensors = load_safetensors(data)
        steps = tensors["steps"].tolist()
        return cls(
            [tensors[f"mean.{i}"].astype(np.float32) for i in range(len(steps))],
            [tensors[f"components.{i}"].astype(np.float32) for i in range(len(steps))],
            [float(s) for s in steps],
        )


def fit_basis(states: np.ndarray, error: float) -> Basis:
    """The basis of each layer of ``states`` ``(n, layers, H)``, with the step that keeps
    their mean relative squared error at ``error`` (in ``(0, 1)``).

    >>> rng = np.random.default_rng(0)
    >>> states = rng.normal(size=(512, 2, 16)) * np.geomspace(10, 0.1, 16)
    >>> basis = fit_basis(states.astype(np.float32), 0.01)
    >>> _, measured = encode_states(states.astype(np.float32), basis)
    >>> bool(abs(measured - 0.01) < 0.005), basis.layers, basis.width
    (True, 2, 16)
    """
    _check_states(states)
    if not 0.0 < error < 1.0:
        raise ValueError(f"error must be in (0, 1), got {error}")
    means, components, steps = [], [], []
    for layer in range(states.shape[1]):
        h = torch.from_numpy(np.ascontiguousarray(states[:, layer])).double()
        mean = h.mean(0)
        centred = h - mean
        variance, vectors = torch.linalg.eigh(centred.T @ centred / len(h))
        order = torch.argsort(variance, descending=True)
        spread = variance[order].clamp_min(0).sqrt()
        directions = vectors[:, order].T
        mean16 = mean.to(torch.float16).double()  # what decoding will use
        directions16 = directions.to(torch.float16).double()
        step = _step_for(h, mean16, directions16, spread, error)
        kept = _kept(spread, step)
        means.append(mean16.float().numpy())
        components.append(np.ascontiguousarray(directions16[:kept].float().numpy()))
        steps.append(step)
    return Basis(means, components, steps)


def encode_states(states: np.ndarray, basis: Basis) -> tuple[bytes, float]:
    """``states`` ``(n, layers, H)`` as one payload, and their mean relative squared error
    after decoding (over positions and layers)."""
    _check_states(states)
    n, layers, width = states.shape
    if (layers, width) != (basis.layers, basis.width):
        raise ValueError(
            f"states have {layers} layers of width {width}, the basis {basis.layers} of "
            f"width {basis.width}"
        )
    parts = [_HEADER.pack(MAGIC, VERSION, layers, n)]
    errors = []
    for layer in range(layers):
        h = torch.from_numpy(np.ascontiguousarray(states[:, layer]))
        q = _quantize(h, basis, layer)
        errors.append(_relative_error(h.double(), _reconstruct(q, basis, layer).double()))
        parts.append(_encode_layer(q.numpy().astype(np.int32)))
    return b"".join(parts), float(np.mean(errors)) if errors else 0.0


def decode_states(payload: bytes, basis: Basis) -> np.ndarray:
    """The ``(n, layers, H)`` float32 states of an `encode_states` payload."""
    if len(payload) < _HEADER.size:
        raise ValueError("hidden-state payload is shorter than its header")
    magic, version, layers, n = _HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise ValueError(f"not a hidden-state payload (magic {magic!r})")
    if version != VERSION:
        raise ValueError(f"hidden-state payload version {version}, this potstill reads {VERSION}")
    if layers != basis.layers:
        raise ValueError(f"payload has {layers} layers, the basis {basis.layers}")
    out = np.empty((n, layers, basis.width), dtype=np.float32)
    offset = _HEADER.size
    for layer in range(layers):
        q, offset = _decode_layer(payload, offset, n, basis.components[layer].shape[0])
        out[:, layer] = _reconstruct(torch.from_numpy(q).float(), basis, layer).numpy()
    if offset != len(payload):
        raise ValueError(f"hidden-state payload has {len(payload) - offset} bytes past its end")
    return out


def _check_states(states: np.ndarray) -> None:
    if not isinstance(states, np.ndarray) or states.ndim != 3:
        raise ValueError(
            f"states must be a (n, layers, H) array, got {getattr(states, 'shape', states)}"
        )
    if states.dtype != np.float32:
        raise ValueError(f"states must be float32, got {states.dtype}")
    if not np.isfinite(states).all():
        raise ValueError("states hold NaN or infinite values")


def _quantize(h: torch.Tensor, basis: Basis, layer: int) -> torch.Tensor:
    """``(n, kept)`` integer-valued float32 coefficients of float32 states ``h``."""
    mean = torch.from_numpy(basis.means[layer])
    comp = torch.from_numpy(basis.components[layer])
    return torch.round((h - mean) @ (comp.T / basis.steps[layer]))


def _reconstruct(q: torch.Tensor, basis: Basis, layer: int) -> torch.Tensor:
    """The float32 states of coefficients ``q`` (float32)."""
    mean = torch.from_numpy(basis.means[layer])
    comp = torch.from_numpy(basis.components[layer])
    return q @ (comp * basis.steps[layer]) + mean


def _relative_error(h: torch.Tensor, rebuilt: torch.Tensor) -> float:
    """Mean over positions of ``‖ĥ − h‖² / ‖h‖²`` (a zero state counts its absolute error)."""
    size = (h * h).sum(-1).clamp_min(1e-12)
    return float((((rebuilt - h) ** 2).sum(-1) / size).mean())


def _kept(spread: torch.Tensor, step: float) -> int:
    """How many leading directions (by falling ``spread``) a basis keeps at ``step``."""
    return max(1, int((spread > KEEP_SPREAD * step).sum()))


def _step_for(
    h: torch.Tensor,
    mean: torch.Tensor,
    directions: torch.Tensor,
    spread: torch.Tensor,
    error: float,
) -> float:
    """The step whose reconstruction of ``h`` has mean relative error ``error``: bisection
    on a log scale (the error grows with the step), with the error counted in the
    coordinates of the (orthonormal) ``directions``, so that each try costs O(n·H)."""
    sample = h[torch.linspace(0, len(h) - 1, min(len(h), 4096)).long()]
    coords = ((sample - mean) @ directions.T).float()
    size = (sample * sample).sum(-1).clamp_min(1e-12).float()
    dropped = (coords * coords).flip(-1).cumsum(-1).flip(-1)  # energy from direction j on
    width = coords.shape[-1]

    def measured(step: float) -> float:
        kept = _kept(spread, step)
        lost = (torch.round(coords[:, :kept] / step) * step - coords[:, :kept]).square().sum(-1)
        if kept < width:
            lost = lost + dropped[:, kept]
        return float((lost / size).mean())

    scale = float(spread.max().clamp_min(1e-12))
    low, high = scale * 1e-6, scale * 16
    for _ in range(24):  # the step to a factor 1.00002
        mid = (low * high) ** 0.5
        if measured(mid) > error:
            high = mid
        else:
            low = mid
    return low


def _ratios(q: np.ndarray) -> np.ndarray:
    """Each column's two-sided geometric ratio ``ρ`` (``P(k) ∝ ρ^|k|``, the discrete
    Laplace) fitted to its mean ``|k|``, as ``uint16`` in units of 2⁻¹⁶."""
    mean = np.abs(q).mean(0) if len(q) else np.zeros(q.shape[1])
    rho = np.where(mean > 0, (np.sqrt(1 + mean**2) - 1) / np.maximum(mean, 1e-12), 0.0)
    return np.clip(np.round(rho * 65536), 1, 65535).astype(np.uint16)


def _models(ratios: np.ndarray, ranges: np.ndarray) -> list:
    """One categorical model per column over ``[−range, range]``, from integer weights
    ``⌊2³⁰ ρ^|k|⌋`` (at least 1) computed in integer arithmetic, so that every machine
    builds the same model bit for bit (floating-point ``exp`` may differ in its last bit)."""
    ratio = ratios.astype(np.int64)
    reach = int(ranges.max()) if len(ranges) else 0
    weights = np.empty((len(ratio), reach + 1), dtype=np.int64)
    weights[:, 0] = 1 << 30
    for k in range(1, reach + 1):
        weights[:, k] = np.maximum((weights[:, k - 1] * ratio) >> 16, 1)
    models = []
    for column, limit in enumerate(ranges.tolist()):
        half = weights[column, : limit + 1]
        both = np.concatenate([half[:0:-1], half]).astype(np.float64)  # exact: < 2^53
        models.append(constriction.stream.model.Categorical(both, perfect=False))
    return models


def _encode_layer(q: np.ndarray) -> bytes:
    """A layer's ``(n, kept)`` coefficients, column by column under each column's model."""
    n, kept = q.shape
    ranges = np.maximum(np.abs(q).max(0) if n else np.zeros(kept, dtype=np.int64), 1)
    if int(ranges.max(initial=0)) > MAX_SYMBOL:
        raise ValueError(
            f"a hidden-state coefficient is {int(ranges.max())} steps from the mean, over "
            f"{MAX_SYMBOL}"
        )
    ranges = ranges.astype(np.uint32)
    ratios = _ratios(q)
    coder = constriction.stream.stack.AnsCoder()
    if n:
        models = _models(ratios, ranges)
        for column in reversed(range(kept)):  # a stack: decoded first-column first
            symbols = np.ascontiguousarray(q[:, column] + int(ranges[column]), dtype=np.int32)
            coder.encode_reverse(symbols, models[column])
    words = coder.get_compressed().astype("<u4")
    return b"".join(
        [
            _LAYER.pack(kept, len(words)),
            ranges.astype("<u4").tobytes(),
            ratios.astype("<u2").tobytes(),
            words.tobytes(),
        ]
    )


def _decode_layer(payload: bytes, offset: int, n: int, kept_basis: int) -> tuple[np.ndarray, int]:
    if offset + _LAYER.size > len(payload):
        raise ValueError("hidden-state payload is truncated")
    kept, num_words = _LAYER.unpack_from(payload, offset)
    if kept != kept_basis:
        raise ValueError(f"payload keeps {kept} directions of a layer, the basis {kept_basis}")
    offset += _LAYER.size
    end = offset + 6 * kept + 4 * num_words
    if end > len(payload):
        raise ValueError("hidden-state payload is truncated")
    ranges = np.frombuffer(payload, dtype="<u4", count=kept, offset=offset).astype(np.int64)
    if int(ranges.max(initial=1)) > MAX_SYMBOL or int(ranges.min(initial=1)) < 1:
        raise ValueError("hidden-state payload has a coefficient range out of bounds")
    ratios = np.frombuffer(payload, dtype="<u2", count=kept, offset=offset + 4 * kept)
    words = np.frombuffer(payload, dtype="<u4", count=num_words, offset=offset + 6 * kept)
    q = np.zeros((n, kept), dtype=np.int32)
    if n and kept:
        coder = constriction.stream.stack.AnsCoder(words.astype(np.uint32))
        for column, model in enumerate(_models(ratios, ranges)):
            q[:, column] = coder.decode(model, n) - ranges[column]
    return q, end
