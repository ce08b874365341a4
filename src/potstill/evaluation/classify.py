"""Classifier metrics on a labelled test set: accuracy, F1, calibration, agreement, speed.

`score_classifiers` runs every model over the same examples and scores its predictions
against the gold labels (and against the teacher's argmax when given). Calibration is the
expected calibration error of Guo et al. 2017 ("On Calibration of Modern Neural
Networks"): 15 equal-width confidence bins.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from potstill.data.examples import ClassExamples
from potstill.util.log import bar
from potstill.util.modes import eval_mode

ECE_BINS = 15


@dataclass
class ClassScores:
    """One model's scores on the test set.

    ``per_class_f1[c]`` is 0 for a class neither in the gold labels nor predicted;
    ``macro_f1`` averages the classes that are in either (scikit-learn's convention).
    ``confusion[g][p]`` counts examples of gold class ``g`` predicted as ``p``.
    ``agreement`` is the fraction predicted as the teacher's argmax (None without one).
    ``examples_per_second`` maps batch size -> median throughput.
    """

    accuracy: float
    macro_f1: float
    per_class_f1: list[float]
    ece: float
    agreement: float | None
    confusion: list[list[int]]
    examples_per_second: dict[int, float]


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    examples: ClassExamples,
    batch_size: int = 32,
    *,
    advance: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The model's class probabilities for every example, ``(N, C)`` float32, on the CPU;
    ``advance(n)`` is called after every batch of ``n`` examples (a progress bar)."""
    device = _device(model)
    out = []
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            index = torch.arange(start, min(start + batch_size, len(examples)))
            batch = examples.batch(index).to(device)
            logits = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()
            ).logits  # (B, C)
            out.append(logits.float().softmax(-1).cpu())
            if advance is not None:
                advance(len(index))
    return torch.cat(out)


def class_scores(
    probs: torch.Tensor, gold: torch.Tensor, teacher_probs: torch.Tensor | None = None
) -> ClassScores:
    """Scores of ``probs`` ``(N, C)`` against ``gold`` ``(N,)`` long (speed left empty).

    >>> s = class_scores(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]),
    ...                  torch.tensor([0, 1, 1]))
    >>> round(s.accuracy, 4), round(s.macro_f1, 4), round(s.ece, 4)
    (0.6667, 0.6667, 0.3)
    """
    n, num_classes = probs.shape
    gold = gold.long().reshape(-1)
    if gold.shape != (n,):
        raise ValueError(f"gold must be (N,) = ({n},), got {tuple(gold.shape)}")
    if len(gold) and (gold.min() < 0 or gold.max() >= num_classes):
        raise ValueError(f"gold labels must lie in 0..{num_classes - 1}")
    confidence, predicted = probs.max(-1)  # (N,), (N,)
    correct = (predicted == gold).double()  # (N,)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((gold, predicted), torch.ones(n, dtype=torch.long), accumulate=True)
    true_pos = confusion.diag().double()  # (C,)
    gold_count = confusion.sum(1).double()  # (C,)
    predicted_count = confusion.sum(0).double()  # (C,)
    # F1 = 2·TP / (2·TP + FP + FN) = 2·TP / (gold + predicted); 0 when both are empty.
    denominator = gold_count + predicted_count
    f1 = torch.where(denominator > 0, 2 * true_pos / denominator.clamp_min(1), 0.0)  # (C,)
    present = denominator > 0
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    agreement = None
    if teacher_probs is not None:
        if teacher_probs.shape != probs.shape:
            raise ValueError(
                f"teacher_probs must be (N, C) = {tuple(probs.shape)}, got "
                f"{tuple(teacher_probs.shape)}"
            )
        agreement = float((predicted == teacher_probs.argmax(-1)).double().mean())
    return ClassScores(
        accuracy=float(correct.mean()) if n else 0.0,
        macro_f1=macro_f1,
        per_class_f1=[float(v) for v in f1],
        ece=expected_calibration_error(confidence, correct),
        agreement=agreement,
        confusion=confusion.tolist(),
        examples_per_second={},
    )


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """``Σ_b (n_b / N) · |accuracy_b − mean confidence_b|`` over equal-width bins
    ``(b/bins, (b+1)/bins]`` of the confidence ``(N,)``; ``correct`` ``(N,)`` is 0/1.

    >>> round(expected_calibration_error(torch.tensor([0.95, 0.95]), torch.tensor([1, 0])), 4)
    0.45
    """
    confidence, correct = confidence.double(), correct.double()
    if confidence.numel() == 0:
        return 0.0
    # Bin b holds (b/bins, (b+1)/bins]: ceil(c · bins) − 1, a confidence of 0 in bin 0.
    which = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)  # (N,)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap = (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
            total += float(in_bin.double().mean() * gap)
    return total


@torch.no_grad()
def examples_per_second(
    model: nn.Module,
    examples: ClassExamples,
    batch_size: int,
    *,
    repeats: int = 3,
    max_examples: int = 64,
) -> float:
    """Median over ``repeats`` of the examples classified per second at ``batch_size``.

    Each repeat runs the first ``max(batch_size, min(N, max_examples))`` examples (cycled
    when there are fewer) in batches of ``batch_size``, after one untimed warm-up batch.
    """
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size}, {repeats}")
    device = _device(model)
    n = max(batch_size, min(len(examples), max_examples))
    order = torch.arange(n) % len(examples)
    batches = [
        examples.batch(order[i : i + batch_size]).to(device) for i in range(0, n, batch_size)
    ]

    def run(chunk: list) -> None:
        for batch in chunk:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long())
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rates = []
    with eval_mode(model):
        run(batches[:1])  # warm-up: allocations, lazy init
        for _ in range(repeats):
            start = time.perf_counter()
            run(batches)
            rates.append(n / max(time.perf_counter() - start, 1e-9))
    return statistics.median(rates)


def score_classifiers(
    models: dict[str, nn.Module],
    examples: ClassExamples,
    gold: torch.Tensor,
    *,
    teacher_probs: torch.Tensor | None = None,
    batch_size: int = 32,
    speed_batch_sizes: tuple[int, ...] = (1, 32),
) -> dict[str, ClassScores]:
    """Every model's `ClassScores` on ``examples`` against ``gold`` ``(N,)`` long.

    ``teacher_probs`` ``(N, C)``: the teacher's distributions, for agreement. Speed is
    measured at each of ``speed_batch_sizes`` (none when empty). A progress bar counts the
    test texts scored, every model's.
    """
    scores = {}
    with bar("models on the test set", total=len(models) * len(examples)) as shown:
        for name, model in models.items():
            probs = predict_probs(model, examples, batch_size, advance=shown.advance)
            score = class_scores(probs, gold, teacher_probs)
            score.examples_per_second = {
                b: examples_per_second(model, examples, b) for b in speed_batch_sizes
            }
            scores[name] = score
    return scores


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
