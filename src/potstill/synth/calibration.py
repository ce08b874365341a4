"""Calibration: how the teacher's label scores become its soft labels.

Pure numpy on (N, L) label log-likelihoods or distributions. ``content_free`` divides out
the teacher's answer to content-free inputs (Zhao et al. 2021, "Calibrate Before Use"),
which assumes balanced classes; ``prior`` corrects for label shift (Saerens, Latinne &
Decaestecker 2002) towards the user's gold label frequencies, or an EM estimate of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

CalibrateMode = Literal["auto", "none", "content_free", "prior"]
# What `auto` chooses from, in this order: a tie goes to the earlier (the one that moves
# the teacher's labels less).
CANDIDATES: tuple[CalibrateMode, ...] = ("none", "prior", "content_free")
# EM stops once no class's prior moves more than EM_TOLERANCE: a few dozen iterations for
# well separated classes, a few hundred when they overlap (each costs one pass over N × L).
EM_ITERATIONS = 1000
EM_TOLERANCE = 1e-6  # largest change of any class's prior between two iterations
MATCH_TOLERANCE = 1e-9  # largest gap of any class's calibrated mean from its target


def label_shift(
    probs: np.ndarray, source_prior: np.ndarray, target_prior: np.ndarray
) -> np.ndarray:
    """Posteriors made under ``source_prior`` (L,) moved to ``target_prior`` (L,):
    ``p'(c|x) = p(c|x) · target(c) / source(c)``, renormalised per row; ``probs`` is
    (N, L), the result (N, L) float64 with rows summing to 1.

    Saerens, Latinne & Decaestecker 2002, "Adjusting the Outputs of a Classifier to New a
    Priori Probabilities: A Simple Procedure", eq. 2.4.

    >>> label_shift(np.array([[0.5, 0.5]]), np.array([0.8, 0.2]), np.array([0.5, 0.5]))
    array([[0.2, 0.8]])
    """
    logprobs = np.log(np.clip(np.asarray(probs, np.float64), 1e-300, None))
    return softmax(logprobs + _log_ratio(target_prior, source_prior))


def em_prior(
    probs: np.ndarray,
    source_prior: np.ndarray,
    *,
    iterations: int = EM_ITERATIONS,
    tolerance: float = EM_TOLERANCE,
) -> np.ndarray:
    """The class prior of the texts behind ``probs`` (N, L), posteriors made under
    ``source_prior`` (L,): the maximum-likelihood estimate by EM, (L,) summing to 1.

    Saerens, Latinne & Decaestecker 2002, section 2.3: start at the source prior; E: move
    the posteriors to the current prior (`label_shift`); M: the prior is their mean. Stops
    after ``iterations``, or once no class's prior moves more than ``tolerance``. With the
    mean of ``probs`` itself as the source, that mean is already the fixed point (the
    likelihood's gradient is flat there), so the source must be known apart from these
    texts: for a zero-shot teacher, its answer to content-free inputs.

    >>> em_prior(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), np.array([0.5, 0.5])).round(4)
    array([0.6667, 0.3333])
    """
    probs = np.asarray(probs, np.float64)
    source = np.asarray(source_prior, np.float64)
    prior = source / source.sum()
    for _ in range(iterations):
        new = label_shift(probs, source, prior).mean(axis=0)
        new /= new.sum()
        moved = np.abs(new - prior).max()
        prior = new
        if moved < tolerance:
            break
    return prior


def matching_source(
    logprobs: np.ndarray,
    target: np.ndarray,
    *,
    iterations: int = EM_ITERATIONS,
    tolerance: float = MATCH_TOLERANCE,
) -> np.ndarray:
    """The source prior (L,) whose label shift to ``target`` (L,) makes the mean of the
    shifted distributions of ``logprobs`` (N, L) equal ``target``: (L,) summing to 1.

    Fixed-point iteration on the log ratio ``r = log target - log source`` (iterative
    proportional fitting of one margin): ``r += log target - log mean(softmax(logprobs +
    r))``, from ``r = log target - log p̄``, the one-step label shift; stops once no
    class's mean is more than ``tolerance`` from its target, or after ``iterations``.

    >>> logprobs = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]))
    >>> source = matching_source(logprobs, np.array([0.5, 0.5]))
    >>> label_shift(softmax(logprobs), source, np.array([0.5, 0.5])).mean(axis=0).round(6)
    array([0.5, 0.5])
    """
    logprobs = np.asarray(logprobs, np.float64)
    log_target = np.log(np.asarray(target, np.float64))
    ratio = log_target - np.log(softmax(logprobs).mean(axis=0))
    for _ in range(iterations):
        mean = softmax(logprobs + ratio).mean(axis=0)
        if np.abs(mean - np.exp(log_target)).max() < tolerance:
            break
        ratio += log_target - np.log(mean)
    source = np.exp(log_target - ratio)
    return source / source.sum()


def class_prior(label_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """The class frequencies of gold labels ``label_ids`` (N,), add-one (Laplace)
    smoothed so a class absent from the sample keeps a small prior: (L,) summing to 1.

    >>> class_prior(np.array([0, 0, 0, 1]), 3).round(4)
    array([0.5714, 0.2857, 0.1429])
    """
    counts = np.bincount(np.asarray(label_ids, np.int64), minlength=num_classes)
    return (counts + 1.0) / (counts.sum() + num_classes)


@dataclass(frozen=True)
class Calibration:
    """How the teacher's label scores become its soft labels: each class's probability is
    multiplied by ``target(c) / source(c)`` and every row renormalised (`label_shift`).

    ``mode`` is the calibration applied (``task.calibrate``, or what ``auto`` chose);
    ``source`` and ``target`` are (L,) priors; ``target_from`` says where the target came
    from (``uniform``, ``train gold labels``, ``EM estimate``, or ``none`` when nothing is
    changed). ``chosen_by``: when ``auto`` chose, each candidate's accuracy on the
    gold-labelled train texts (empty: there were none, so ``none``); None otherwise.
    """

    mode: CalibrateMode
    source: np.ndarray
    target: np.ndarray
    target_from: str
    chosen_by: dict[str, float] | None = None

    def apply(self, logprobs: np.ndarray) -> np.ndarray:
        """The soft labels (N, L) for raw label log-likelihoods ``logprobs`` (N, L)."""
        # In log space: label_shift(softmax(logprobs)), without rounding small probabilities.
        return softmax(np.asarray(logprobs, np.float64) + _log_ratio(self.target, self.source))

    def summary(self) -> dict[str, object]:
        """The calibration as the report and the labels table record it."""
        return {
            "mode": self.mode,
            "source": [float(p) for p in self.source],
            "target": [float(p) for p in self.target],
            "target_from": self.target_from,
            "chosen_by": self.chosen_by,
        }


def fit_calibration(
    mode: CalibrateMode,
    logprobs: np.ndarray,
    content_free_prior: np.ndarray,
    gold_prior: np.ndarray | None = None,
    gold: np.ndarray | None = None,
) -> Calibration:
    """The calibration ``mode`` asks for, fitted on the raw label log-likelihoods
    ``logprobs`` (N, L) of the unlabelled train texts.

    - ``auto``: with ``gold`` (N,), the gold label ids of those texts (the user's
      labelled examples), each of `CANDIDATES` is fitted and the one whose labels' argmax
      agrees with the most gold labels is kept (a tie: the earlier); without, ``none``,
      the one that assumes nothing about the classes' balance. ``gold_prior`` defaults to
      the add-one-smoothed frequencies of ``gold``.

    - ``none``: the teacher's distributions as they are.
    - ``content_free``: ``content_free_prior`` (L, the mean answer to content-free inputs)
      divided out, a uniform prior in: Zhao et al. 2021, "Calibrate Before Use". It
      assumes balanced classes.
    - ``prior``: label shift (Saerens et al. 2002). With ``gold_prior`` (L, the user's
      gold label frequencies for these texts), the source prior divided out is the one
      that makes the calibrated labels' mean equal ``gold_prior`` (`matching_source`;
      dividing out the teacher's mean distribution p̄ is its first step, and leaves a
      peaked teacher's labels far from the gold frequencies). Without, the teacher's
      content-free answer is divided out and the EM estimate of the texts' prior
      (`em_prior`, from that source) multiplied in: p̄ cannot be the source there, as EM
      would return p̄ itself and change nothing.
    """
    num_classes = len(content_free_prior)
    uniform = np.full(num_classes, 1.0 / num_classes)
    if mode == "auto":
        return _choose(logprobs, content_free_prior, gold_prior, gold)
    if mode == "none":
        return Calibration(mode, uniform, uniform, "none")
    content_free = np.asarray(content_free_prior, np.float64)
    if mode == "content_free":
        return Calibration(mode, content_free, uniform, "uniform")
    probs = softmax(np.asarray(logprobs, np.float64))
    if gold_prior is not None:
        target = np.asarray(gold_prior, np.float64)
        source = matching_source(logprobs, target) if len(probs) else uniform
        return Calibration(mode, source, target, "train gold labels")
    target = em_prior(probs, content_free) if len(probs) else uniform
    return Calibration(mode, content_free, target, "EM estimate")


def _choose(
    logprobs: np.ndarray,
    content_free_prior: np.ndarray,
    gold_prior: np.ndarray | None,
    gold: np.ndarray | None,
) -> Calibration:
    """``auto``: the candidate whose labels agree best with the gold labels."""
    if gold is None or not len(gold):
        return replace(fit_calibration("none", logprobs, content_free_prior), chosen_by={})
    gold = np.asarray(gold, np.int64)
    if len(gold) != len(logprobs):
        raise ValueError(f"gold has {len(gold)} labels for {len(logprobs)} rows of scores")
    if gold_prior is None:
        gold_prior = class_prior(gold, len(content_free_prior))
    fitted = {
        mode: fit_calibration(mode, logprobs, content_free_prior, gold_prior) for mode in CANDIDATES
    }
    accuracy = {
        mode: float((calibration.apply(logprobs).argmax(axis=1) == gold).mean())
        for mode, calibration in fitted.items()
    }
    best = max(CANDIDATES, key=accuracy.__getitem__)  # the first of the best
    return replace(fitted[best], chosen_by=accuracy)


def apply_calibration(logprobs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Divide the prior (L,) out of the label distribution given by ``logprobs`` (N, L):
    the calibrated log-distribution, (N, L), each row's exp summing to 1.

    >>> scores = np.log([[0.6, 0.4]])
    >>> np.exp(apply_calibration(scores, np.array([0.6, 0.4]))).round(3)
    array([[0.5, 0.5]])
    """
    z = np.asarray(logprobs, dtype=np.float64) - np.log(np.asarray(prior, dtype=np.float64))
    return z - logsumexp(z)


def _log_ratio(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``log target − log source`` per class, (L,)."""
    return np.log(np.asarray(target, np.float64)) - np.log(np.asarray(source, np.float64))


def logsumexp(z: np.ndarray) -> np.ndarray:
    """Per row of ``z`` (N, L): ``log Σ exp``, (N, 1), without overflow."""
    top = z.max(axis=1, keepdims=True)
    return top + np.log(np.exp(z - top).sum(axis=1, keepdims=True))


def softmax(logprobs: np.ndarray) -> np.ndarray:
    """Per row of ``logprobs`` (N, L): the distribution, (N, L), each row summing to 1."""
    return np.exp(logprobs - logsumexp(logprobs))
