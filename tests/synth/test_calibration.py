"""Calibration of the teacher's label scores, in float64 against hand computations:
label shift (Saerens et al. 2002) and its EM prior, the smoothed gold prior, and the three
`task.calibrate` modes; properties over random distributions."""

from __future__ import annotations

import numpy as np
import pytest

from potstill.synth.calibration import (
    apply_calibration,
    class_prior,
    em_prior,
    fit_calibration,
    label_shift,
    matching_source,
    softmax,
)

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])


def _random_probs(seed: int, n: int = 50, classes: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(classes) * 0.7, size=n)


def _random_prior(seed: int, classes: int = 4) -> np.ndarray:
    return np.random.default_rng(seed + 1000).dirichlet(np.ones(classes))


def test_label_shift_equals_a_hand_computation():
    source, target = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    # weights target/source = 0.4, 1.0, 2.5
    row0 = [0.7 * 0.4, 0.2 * 1.0, 0.1 * 2.5]  # 0.28, 0.20, 0.25
    row1 = [0.1 * 0.4, 0.3 * 1.0, 0.6 * 2.5]  # 0.04, 0.30, 1.50
    expected = np.array([[v / sum(row0) for v in row0], [v / sum(row1) for v in row1]])
    got = label_shift(PROBS, source, target)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_label_shift_properties(seed):
    probs = _random_probs(seed)
    uniform = np.full(4, 0.25)
    # A uniform source and target, or any source equal to the target: nothing changes.
    np.testing.assert_allclose(label_shift(probs, uniform, uniform), probs, atol=1e-12)
    prior = _random_prior(seed)
    np.testing.assert_allclose(label_shift(probs, prior, prior), probs, atol=1e-12)
    # Rows sum to 1, and shifting there and back is the identity.
    shifted = label_shift(probs, uniform, prior)
    np.testing.assert_allclose(shifted.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(label_shift(shifted, prior, uniform), probs, atol=1e-10)


def test_em_prior_equals_a_hand_computation():
    probs, source = np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0.5, 0.5])
    # Step 1: at the source prior the posteriors are unchanged; their mean is the prior.
    np.testing.assert_allclose(em_prior(probs, source, iterations=1), [0.65, 0.35], rtol=1e-12)
    # Step 2: weights 0.65/0.5 = 1.3 and 0.35/0.5 = 0.7.
    row0 = [0.9 * 1.3 / 1.24, 0.1 * 0.7 / 1.24]  # 1.24 = 1.17 + 0.07
    row1 = [0.4 * 1.3 / 0.94, 0.6 * 0.7 / 0.94]  # 0.94 = 0.52 + 0.42
    expected = [(row0[0] + row1[0]) / 2, (row0[1] + row1[1]) / 2]
    np.testing.assert_allclose(em_prior(probs, source, iterations=2), expected, rtol=1e-12)


def test_em_prior_recovers_the_prior_the_texts_were_drawn_from():
    # Two classes with known p(x | c) over three kinds of text; texts drawn with prior
    # (0.8, 0.2) in exact proportions; posteriors made under a uniform source prior.
    likelihood = np.array([[0.5, 0.1], [0.3, 0.3], [0.2, 0.6]])  # (x, c)
    counts = [420, 300, 280]  # 1000 · Σ_c prior(c) p(x | c)
    posteriors = likelihood / likelihood.sum(axis=1, keepdims=True)
    probs = np.repeat(posteriors, counts, axis=0)  # (1000, 2)
    prior = em_prior(probs, np.array([0.5, 0.5]))
    np.testing.assert_allclose(prior, [0.8, 0.2], atol=1e-4)
    # The mean posterior, the correction's naive estimate, is pulled towards uniform.
    assert probs.mean(axis=0)[0] < 0.75


@pytest.mark.parametrize("seed", range(5))
def test_em_prior_properties(seed):
    probs, source = _random_probs(seed), _random_prior(seed)
    prior = em_prior(probs, source)
    assert prior.shape == (4,) and abs(prior.sum() - 1) < 1e-12 and (prior > 0).all()
    # A fixed point: the posteriors moved to the estimate average to the estimate.
    np.testing.assert_allclose(label_shift(probs, source, prior).mean(axis=0), prior, atol=1e-5)
    # With the mean posterior as its source, EM stays there: why `prior` mode without
    # gold labels takes the content-free prior as the source.
    mean = probs.mean(axis=0)
    np.testing.assert_allclose(em_prior(probs, mean), mean, atol=1e-12)


def test_one_hot_posteriors_give_the_class_frequencies():
    probs = np.eye(3)[[0, 0, 1, 0, 2, 0]]
    np.testing.assert_allclose(em_prior(probs, np.full(3, 1 / 3)), [4 / 6, 1 / 6, 1 / 6])


def test_class_prior_is_add_one_smoothed():
    got = class_prior(np.array([2, 2, 0, 2]), 4)
    np.testing.assert_allclose(got, [2 / 8, 1 / 8, 4 / 8, 1 / 8], rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_the_modes(seed):
    logprobs = np.log(_random_probs(seed)) - 3.0  # raw label log-likelihoods
    probs = softmax(logprobs)
    content_free = _random_prior(seed)
    gold = _random_prior(seed + 7)

    none = fit_calibration("none", logprobs, content_free, gold)
    np.testing.assert_allclose(none.apply(logprobs), probs, atol=1e-12)

    zhao = fit_calibration("content_free", logprobs, content_free, gold)
    expected = np.exp(apply_calibration(logprobs, content_free))
    np.testing.assert_allclose(zhao.apply(logprobs), expected, atol=1e-12)

    with_gold = fit_calibration("prior", logprobs, content_free, gold)
    assert with_gold.target_from == "train gold labels"
    np.testing.assert_allclose(with_gold.apply(logprobs).mean(axis=0), gold, atol=1e-8)
    expected = label_shift(probs, _matching_source_by_optimizer(logprobs, gold), gold)
    np.testing.assert_allclose(with_gold.apply(logprobs), expected, atol=1e-6)

    em = fit_calibration("prior", logprobs, content_free)
    assert em.target_from == "EM estimate"
    np.testing.assert_allclose(em.source, content_free)
    np.testing.assert_allclose(em.target, em_prior(probs, content_free), atol=1e-12)
    for calibration in (none, zhao, with_gold, em):
        np.testing.assert_allclose(calibration.apply(logprobs).sum(axis=1), 1.0, atol=1e-12)


def _matching_source_by_optimizer(logprobs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The reference for `matching_source`, by another road: the log ratio ``r`` minimises
    the convex ``mean_i logsumexp(logprobs_i + r) - r · target``, whose gradient is the
    calibrated mean minus the target and whose Hessian is the mean of ``diag(p) - p pᵀ``;
    Newton's method (a pseudo-inverse: the Hessian is singular along the all-ones
    direction, which changes nothing), in float64."""
    r = np.zeros(len(target))
    for _ in range(100):
        p = softmax(logprobs + r)
        gradient = p.mean(axis=0) - target
        hessian = np.diag(p.mean(axis=0)) - p.T @ p / len(p)
        r -= np.linalg.pinv(hessian) @ gradient
    source = target * np.exp(-r)
    return source / source.sum()


@pytest.mark.parametrize("seed", range(3))
def test_the_matching_source_puts_the_calibrated_mean_on_the_target(seed):
    logprobs = np.log(_random_probs(seed)) - 2.0
    target = _random_prior(seed + 3)
    source = matching_source(logprobs, target)
    np.testing.assert_allclose(source.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(source, _matching_source_by_optimizer(logprobs, target), atol=1e-6)
    shifted = label_shift(softmax(logprobs), source, target)
    np.testing.assert_allclose(shifted.mean(axis=0), target, atol=1e-8)
    # already matched: nothing to move
    np.testing.assert_allclose(matching_source(np.log(shifted), target), target, atol=1e-8)


def test_prior_mode_moves_the_mean_towards_the_gold_prior():
    # A teacher that over-answers class 1 on texts that are mostly class 0.
    probs = np.array([[0.45, 0.55]] * 8 + [[0.2, 0.8]] * 2)
    gold = np.array([0.8, 0.2])
    shifted = fit_calibration("prior", np.log(probs), np.array([0.5, 0.5]), gold)
    after = shifted.apply(np.log(probs))
    assert (probs.argmax(axis=1) == 1).all() and (after.argmax(axis=1) == 0).all()
    assert abs(after.mean(axis=0)[0] - 0.8) < abs(probs.mean(axis=0)[0] - 0.8)
    assert after[-1, 1] > after[0, 1]  # the texts it was surest of keep the most of class 1


def test_auto_keeps_the_candidate_that_agrees_best_with_the_gold_labels():
    # The teacher over-answers class 1 on texts that are mostly class 0: the gold prior
    # puts its labels right, content-free calibration (it answers [0.5, 0.5] to nothing)
    # and none leave them wrong.
    probs = np.array([[0.45, 0.55]] * 8 + [[0.2, 0.8]] * 2)
    gold = np.array([0] * 8 + [1] * 2)
    auto = fit_calibration("auto", np.log(probs), np.array([0.5, 0.5]), gold=gold)
    assert auto.mode == "prior" and auto.target_from == "train gold labels"
    assert auto.chosen_by == {"none": 0.2, "prior": 0.8, "content_free": 0.2}
    explicit = fit_calibration("prior", np.log(probs), np.array([0.5, 0.5]), class_prior(gold, 2))
    np.testing.assert_allclose(auto.apply(np.log(probs)), explicit.apply(np.log(probs)))


@pytest.mark.parametrize("seed", range(3))
def test_auto_is_never_worse_on_the_gold_labels_than_a_fixed_mode(seed):
    logprobs = np.log(_random_probs(seed))
    gold = np.random.default_rng(seed).integers(0, 4, size=len(logprobs))
    content_free = _random_prior(seed)
    auto = fit_calibration("auto", logprobs, content_free, gold=gold)
    for mode in ("none", "prior", "content_free"):
        fixed = fit_calibration(mode, logprobs, content_free, class_prior(gold, 4))
        accuracy = (fixed.apply(logprobs).argmax(axis=1) == gold).mean()
        assert auto.chosen_by[mode] == pytest.approx(accuracy)
        assert (auto.apply(logprobs).argmax(axis=1) == gold).mean() >= accuracy


def test_auto_without_gold_labels_is_none_and_a_tie_goes_to_none():
    logprobs = np.log(PROBS)
    alone = fit_calibration("auto", logprobs, np.array([0.2, 0.3, 0.5]))
    assert (alone.mode, alone.chosen_by) == ("none", {})
    np.testing.assert_allclose(alone.apply(logprobs), PROBS, atol=1e-12)
    tie = fit_calibration("auto", logprobs, np.full(3, 1 / 3), gold=np.array([0, 2]))
    assert tie.mode == "none" and set(tie.chosen_by.values()) == {1.0}
    with pytest.raises(ValueError, match="gold has 1 labels for 2 rows"):
        fit_calibration("auto", logprobs, np.full(3, 1 / 3), gold=np.array([0]))
