"""Held-out language-model metrics: perplexity, calibration, agreement with the teacher,
and where the models part (by token-frequency band, and the worst positions).

Every model sees the same blocks. The teacher runs once per batch and its log-probs are
reused for every other model, so no model runs twice. Everything is summed as the batches
pass (per-bin and per-band totals, a heap of the worst positions), so memory does not
grow with the held-out set.

Calibration is the expected calibration error of Guo et al. 2017 ("On Calibration of
Modern Neural Networks") of the next-token prediction: confidence is the top probability,
correct means the argmax is the true next token, 15 equal-width bins.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from potstill.util.errors import PotstillError
from potstill.util.modes import eval_mode
from potstill.util.tokens import IGNORE_INDEX

ECE_BINS = 15
WORST = 8  # positions of largest KL(teacher ‖ model) kept per model
BAND_EDGES = (100, 1_000, 10_000)  # frequency ranks where the bands are cut


@dataclass(frozen=True)
class TokenBands:
    """Token ids grouped by how often they occur in some text (the training split).

    ``band_of[i]`` is the band of token id ``i``, ``names[b]`` the label of band ``b``.
    Bands are cut by frequency rank (1 = the most frequent id); the last band also holds
    every id never seen, ids past the end of ``band_of`` included.

    >>> bands = TokenBands.by_frequency(torch.tensor([5, 5, 5, 7, 7, 2]), edges=(1, 2))
    >>> bands.names
    ('1', '2', '>2 or unseen')
    >>> bands.of(torch.tensor([5, 7, 2, 3, 99])).tolist()
    [0, 1, 2, 2, 2]
    """

    names: tuple[str, ...]
    band_of: torch.Tensor  # (V,) long

    @classmethod
    def by_frequency(cls, token_ids: torch.Tensor, edges: Sequence[int] = BAND_EDGES) -> TokenBands:
        """Bands of the ids in ``token_ids`` (any shape, integer) by frequency rank: ranks
        1..edges[0], edges[0]+1..edges[1], …, and the rest with the unseen ids. Ties in
        count are ranked by id."""
        return cls.from_counts(token_counts([token_ids]), edges)

    @classmethod
    def from_counts(cls, counts: torch.Tensor, edges: Sequence[int] = BAND_EDGES) -> TokenBands:
        """Bands from ``counts[i]``, how often id ``i`` occurs (``(V,)`` long, as
        `token_counts` gives)."""
        if counts.dim() != 1 or counts.dtype != torch.long:
            raise ValueError(f"counts must be (V,) long, got {tuple(counts.shape)} {counts.dtype}")
        if len(edges) == 0 or any(e < 1 for e in edges) or list(edges) != sorted(set(edges)):
            raise ValueError(f"edges must be increasing ranks >= 1, got {list(edges)}")
        order = torch.sort(counts, descending=True, stable=True).indices  # most frequent first
        rank = torch.empty_like(order)
        rank[order] = torch.arange(1, len(order) + 1)  # (V,) 1-based
        band_of = torch.bucketize(rank, torch.tensor(list(edges)))  # rank <= edges[b] -> b
        band_of[counts == 0] = len(edges)
        starts = [1] + [e + 1 for e in edges[:-1]]
        names = [f"{a:,}" if a == b else f"{a:,}–{b:,}" for a, b in zip(starts, edges, strict=True)]
        return cls((*names, f">{edges[-1]:,} or unseen"), band_of)

    def of(self, ids: torch.Tensor) -> torch.Tensor:
        """The band of each id: ``(M,)`` long -> ``(M,)`` long, on the CPU."""
        ids = ids.cpu()
        last = len(self.names) - 1
        if len(self.band_of) == 0:
            return torch.full_like(ids, last)
        inside = ids < len(self.band_of)
        return torch.where(inside, self.band_of[ids.clamp(max=len(self.band_of) - 1)], last)


def token_counts(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """How often each id occurs over ``chunks`` of ids (any shape, integer): ``(V,)`` long,
    V one past the largest id. A corpus on disk is counted a chunk at a time.

    >>> token_counts([torch.tensor([2, 0]), torch.tensor([[2]])]).tolist()
    [1, 0, 2]
    """
    counts = torch.zeros(0, dtype=torch.long)
    for chunk in chunks:
        if chunk.dtype.is_floating_point or chunk.dtype == torch.bool:
            raise ValueError(f"token_ids must hold integer ids, got {chunk.dtype}")
        ids = chunk.reshape(-1).long().cpu()
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError("token_ids must be >= 0")
        part = torch.bincount(ids)
        if len(part) > len(counts):
            counts = torch.cat([counts, torch.zeros(len(part) - len(counts), dtype=torch.long)])
        counts[: len(part)] += part
    return counts


@dataclass
class BandScores:
    """One model's scores on the held-out positions whose true next token is in a band."""

    band: str
    tokens: int  # scored positions in the band
    loss: float  # mean next-token cross-entropy, nats (NaN without positions)
    top1: float | None  # share where the argmax is the teacher's; None for the teacher


@dataclass
class Disagreement:
    """A held-out position where a model's prediction is far from the teacher's.

    The prediction is made at ``position`` of held-out block ``block``: its context is
    ``input_ids[block, : position + 1]`` and the true next token ``target``.
    """

    kl: float  # KL(teacher ‖ model) at this position, nats
    block: int
    position: int
    teacher_top: int  # the teacher's argmax token id
    model_top: int  # this model's argmax token id
    target: int


@dataclass
class LMScores:
    """One model's held-out scores.

    `loss` is the mean next-token cross-entropy in nats and `perplexity` is exp(loss).
    `ece` is the expected calibration error of the next-token prediction (15 bins).
    `top1` is the share of scored positions where this model's argmax equals the teacher's,
    `kl` the mean KL(teacher ‖ model) per scored token at temperature 1, in nats; both are
    None for the teacher itself or when no teacher was given. `bands` splits the scores
    by frequency band of the true next token (when bands were given); `worst` holds the
    positions of largest KL(teacher ‖ model), largest first (None where `kl` is None).
    """

    perplexity: float
    loss: float
    top1: float | None
    kl: float | None
    tokens: int
    ece: float
    bands: list[BandScores] | None = None
    worst: list[Disagreement] | None = None


def _zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64)


@dataclass
class _Sums:
    """Running float64 totals for one model, on the CPU."""

    n_bands: int
    ce: float = 0.0
    agree: float = 0.0
    kl: float = 0.0
    tokens: int = 0
    # Per confidence bin: summed top probability, and the positions whose argmax was right.
    bin_confidence: torch.Tensor = field(default_factory=lambda: _zeros(ECE_BINS))
    bin_correct: torch.Tensor = field(default_factory=lambda: _zeros(ECE_BINS))
    band_tokens: torch.Tensor = field(init=False)
    band_ce: torch.Tensor = field(init=False)
    band_agree: torch.Tensor = field(init=False)
    worst: list[tuple[float, int, int, int, int, int]] = field(default_factory=list)  # heap

    def __post_init__(self) -> None:
        self.band_tokens, self.band_ce, self.band_agree = (_zeros(self.n_bands) for _ in range(3))


@dataclass
class _Positions:
    """The scored positions of one batch, on the CPU."""

    where: torch.Tensor  # (M, 2) long: held-out block, position t (predicting t + 1)
    target: torch.Tensor  # (M,) long: the true next token
    band: torch.Tensor | None  # (M,) long: the target's frequency band


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _scored_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Float32 log-probs at the scored positions only.

    input_ids: (B, L); mask: (B, L-1) bool, True where the next token is scored.
    Returns (M, V) with M = mask.sum(), on the model's device.
    """
    device = _device_of(model)
    logits = model(input_ids=input_ids.to(device)).logits  # (B, L, V)
    logits = logits[:, :-1][mask.to(device)]  # (M, V): position t predicts token t+1
    return F.log_softmax(logits.float(), dim=-1)


def _check_inputs(
    models: dict[str, torch.nn.Module],
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    teacher: str | None,
    batch_size: int,
    bands: TokenBands | None,
) -> None:
    if input_ids.shape != labels.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} "
            "must both be (N, L)"
        )
    if input_ids.dtype != torch.long or labels.dtype != torch.long:
        raise ValueError(
            f"input_ids and labels must be torch.long, got {input_ids.dtype} and {labels.dtype}"
        )
    if teacher is not None and teacher not in models:
        raise PotstillError(
            f"teacher {teacher!r} is not among the models scored ({', '.join(models)}); "
            "pass one of those names or None"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bands is not None and not isinstance(bands, TokenBands):
        raise ValueError(f"bands must be a TokenBands or None, got {type(bands).__name__}")


@torch.no_grad()
def score_models(
    models: dict[str, torch.nn.Module],
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    teacher: str | None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    bands: TokenBands | None = None,
) -> dict[str, LMScores]:
    """Score every model on the same held-out blocks.

    input_ids: (N, L) long token ids. labels: (N, L) long, aligned with input_ids in the HF
    convention (label t is the token at t; -100 = not scored); the causal shift is done
    here, so logits at t are scored against labels[t+1]. `teacher` names the key in
    `models` whose predictions the others are compared with (top-1 agreement,
    KL(teacher ‖ model) and the worst positions), or None. `bands` (e.g. from
    `TokenBands.by_frequency` on the training ids) splits the scores by the true next
    token's band. `progress` is called with the number of blocks done after each batch.
    Models are put in eval mode and handed back in the mode they had.
    """
    _check_inputs(models, input_ids, labels, teacher, batch_size, bands)
    # The teacher first: its log-probs are needed by every other model in the batch.
    order = [teacher] if teacher is not None else []
    order += [name for name in models if name != teacher]
    n_bands = len(bands.names) if bands is not None else 0
    sums = {name: _Sums(n_bands) for name in order}

    with eval_mode(*models.values()):
        n_blocks = input_ids.shape[0]
        for start in range(0, n_blocks, batch_size):
            batch_ids = input_ids[start : start + batch_size]  # (B, L)
            target = labels[start : start + batch_size, 1:]  # (B, L-1)
            mask = target != IGNORE_INDEX  # (B, L-1)
            if mask.any():
                where = mask.nonzero().cpu()  # (M, 2), in the order of target[mask]
                where[:, 0] += start
                scored = target[mask].cpu()  # (M,)
                band = bands.of(scored) if bands is not None else None
                positions = _Positions(where, scored, band)
                _score_batch(models, order, teacher, batch_ids, mask, positions, sums)
            if progress is not None:
                progress(min(start + batch_size, n_blocks))

    names = bands.names if bands is not None else None
    return {
        name: _finish(sums[name], has_teacher=teacher not in (None, name), band_names=names)
        for name in models
    }


def _score_batch(
    models: dict[str, torch.nn.Module],
    order: list[str],
    teacher: str | None,
    batch_ids: torch.Tensor,
    mask: torch.Tensor,
    positions: _Positions,
    sums: dict[str, _Sums],
) -> None:
    """One forward per model. batch_ids: (B, L); mask: (B, L-1)."""
    teacher_logprobs = None
    for name in order:
        logprobs = _scored_logprobs(models[name], batch_ids, mask)  # (M, V)
        _accumulate(sums[name], logprobs, positions)
        if name == teacher:
            teacher_logprobs = logprobs
        elif teacher_logprobs is not None:
            _accumulate_agreement(sums[name], name, logprobs, teacher_logprobs, positions)


def _accumulate(sums: _Sums, logprobs: torch.Tensor, positions: _Positions) -> None:
    """Cross-entropy and calibration totals. logprobs: (M, V) float32."""
    target = positions.target.to(logprobs.device)  # (M,)
    ce = -logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (M,)
    sums.ce += ce.double().sum().item()
    sums.tokens += target.numel()
    top_logprob, top = logprobs.max(-1)  # (M,), (M,)
    confidence = top_logprob.double().exp().cpu()  # (M,)
    correct = (top == target).double().cpu()  # (M,)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 goes in bin 0.
    which = (torch.ceil(confidence * ECE_BINS).long() - 1).clamp(0, ECE_BINS - 1)  # (M,)
    sums.bin_confidence.index_add_(0, which, confidence)
    sums.bin_correct.index_add_(0, which, correct)
    if positions.band is not None:
        sums.band_tokens.index_add_(0, positions.band, torch.ones_like(confidence))
        sums.band_ce.index_add_(0, positions.band, ce.double().cpu())


def _accumulate_agreement(
    sums: _Sums,
    name: str,
    logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    positions: _Positions,
) -> None:
    """logprobs, teacher_logprobs: (M, V) float32 at the same scored positions."""
    if logprobs.shape[-1] != teacher_logprobs.shape[-1]:
        raise PotstillError(
            f"vocab mismatch: model {name!r} predicts over {logprobs.shape[-1]} tokens but the "
            f"teacher over {teacher_logprobs.shape[-1]}; compare models that share a tokenizer "
            "(or score without a teacher)"
        )
    teacher_logprobs = teacher_logprobs.to(logprobs.device)
    model_top, teacher_top = logprobs.argmax(-1), teacher_logprobs.argmax(-1)  # (M,), (M,)
    agree = (model_top == teacher_top).double()  # (M,)
    sums.agree += agree.sum().item()
    # KL(teacher ‖ model) = Σ_v p_t (log p_t − log p_m); where p_t = 0 the term is 0.
    kl = F.kl_div(logprobs, teacher_logprobs, reduction="none", log_target=True).sum(-1)  # (M,)
    sums.kl += kl.double().sum().item()
    if positions.band is not None:
        sums.band_agree.index_add_(0, positions.band, agree.cpu())
    _keep_worst(sums.worst, kl, positions, teacher_top, model_top)


def _keep_worst(
    heap: list[tuple[float, int, int, int, int, int]],
    kl: torch.Tensor,
    positions: _Positions,
    teacher_top: torch.Tensor,
    model_top: torch.Tensor,
) -> None:
    """Push the batch's largest KLs into the min-heap of the ``WORST`` largest so far.

    kl, teacher_top, model_top: (M,). Entries: (kl, block, position, teacher_top,
    model_top, target).
    """
    values, index = kl.topk(min(WORST, kl.numel()))  # (k,), (k,)
    index = index.cpu()
    rows = zip(
        values.tolist(),
        positions.where[index].tolist(),
        teacher_top.cpu()[index].tolist(),
        model_top.cpu()[index].tolist(),
        positions.target[index].tolist(),
        strict=True,
    )
    for value, (block, position), teacher_id, model_id, target in rows:
        entry = (value, block, position, teacher_id, model_id, target)
        if len(heap) < WORST:
            heapq.heappush(heap, entry)
        else:
            heapq.heappushpop(heap, entry)


def _finish(sums: _Sums, *, has_teacher: bool, band_names: Sequence[str] | None = None) -> LMScores:
    tokens = sums.tokens
    nan = float("nan")
    if tokens == 0:
        agreement = nan if has_teacher else None
        bands = _bands(sums, band_names, has_teacher) if band_names is not None else None
        return LMScores(nan, nan, agreement, agreement, 0, nan, bands, [] if has_teacher else None)
    loss = sums.ce / tokens
    # Σ_b (n_b / N)·|acc_b − conf_b| = Σ_b |(right in b) − (confidence summed in b)| / N
    ece = (sums.bin_correct - sums.bin_confidence).abs().sum().item() / tokens
    worst = [Disagreement(*entry) for entry in sorted(sums.worst, reverse=True)]
    return LMScores(
        perplexity=math.exp(loss) if loss < 700 else math.inf,
        loss=loss,
        top1=sums.agree / tokens if has_teacher else None,
        kl=sums.kl / tokens if has_teacher else None,
        tokens=tokens,
        ece=ece,
        bands=_bands(sums, band_names, has_teacher) if band_names is not None else None,
        worst=worst if has_teacher else None,
    )


def _bands(sums: _Sums, names: Sequence[str], has_teacher: bool) -> list[BandScores]:
    """Per band: positions, mean cross-entropy, and agreement with the teacher."""
    counts = sums.band_tokens.tolist()
    ce, agree = sums.band_ce.tolist(), sums.band_agree.tolist()
    return [
        BandScores(
            band=name,
            tokens=int(n),
            loss=ce[b] / n if n else float("nan"),
            top1=(agree[b] / n if n else float("nan")) if has_teacher else None,
        )
        for b, (name, n) in enumerate(zip(names, counts, strict=True))
    ]
