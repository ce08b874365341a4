import itertools

import numpy as np
import pytest
import torch

from potstill.data.examples import ClassExamples
from potstill.evaluation.classify import (
    class_scores,
    examples_per_second,
    expected_calibration_error,
    predict_probs,
    score_classifiers,
)
from tests.conftest import make_tokenizer
from tests.tasks.test_classify import tiny_bert, toy_task


def _reference(probs: np.ndarray, gold: np.ndarray, bins: int = 15):
    """Accuracy, per-class F1, macro-F1 (classes in gold or predicted) and ECE, by hand."""
    pred = probs.argmax(1)
    accuracy = float((pred == gold).mean())
    f1 = []
    present = []
    for c in range(probs.shape[1]):
        tp = np.sum((pred == c) & (gold == c))
        fp = np.sum((pred == c) & (gold != c))
        fn = np.sum((pred != c) & (gold == c))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        present.append(bool(np.any(gold == c) or np.any(pred == c)))
    macro = float(np.mean([v for v, p in zip(f1, present, strict=True) if p]))
    conf = probs.max(1)
    ece = 0.0
    edges = np.linspace(0, 1, bins + 1)
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs((pred[in_bin] == gold[in_bin]).mean() - conf[in_bin].mean())
    return accuracy, f1, macro, ece


@pytest.mark.parametrize("seed", range(5))
def test_scores_match_a_hand_computation(seed):
    rng = np.random.default_rng(seed)
    n, c = 40, 4
    logits = rng.normal(size=(n, c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    gold = np.where(
        rng.random(n) < 0.6, probs.argmax(1), rng.integers(0, c - 1, n)
    )  # class 3 rarer
    teacher = rng.dirichlet(np.ones(c), size=n)

    scores = class_scores(torch.tensor(probs), torch.tensor(gold), torch.tensor(teacher))
    accuracy, f1, macro, ece = _reference(probs, gold)
    assert scores.accuracy == pytest.approx(accuracy, abs=1e-12)
    assert scores.per_class_f1 == pytest.approx(f1, abs=1e-12)
    assert scores.macro_f1 == pytest.approx(macro, abs=1e-12)
    assert scores.ece == pytest.approx(ece, abs=1e-12)
    assert scores.agreement == pytest.approx(float((probs.argmax(1) == teacher.argmax(1)).mean()))
    assert np.sum(scores.confusion) == n and np.trace(scores.confusion) == round(accuracy * n)


def test_ece_on_a_case_computed_by_hand():
    # Bins of width 1/15: 0.95 and 0.99 share bin 14 (0.933.., 1], 0.55 sits in bin 8
    # (0.533.., 0.6], 0.5 in bin 7 (0.466.., 0.533..].
    confidence = torch.tensor([0.95, 0.99, 0.55, 0.5], dtype=torch.float64)
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    # bin 14: |0.5 − 0.97| · 2/4; bin 8: |1 − 0.55| · 1/4; bin 7: |1 − 0.5| · 1/4
    expected = 0.47 * 0.5 + 0.45 * 0.25 + 0.5 * 0.25
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([1, 1])) == 0.0


def test_macro_f1_skips_classes_nobody_named():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    scores = class_scores(probs, torch.tensor([0, 1]))
    assert scores.per_class_f1 == [1.0, 1.0, 0.0] and scores.macro_f1 == 1.0
    assert scores.agreement is None


def test_score_classifiers_runs_every_model(one_thread):
    tokenizer = make_tokenizer()
    texts, gold, soft = toy_task(n=10)
    examples = ClassExamples(tokenizer, texts, gold, soft_labels=soft)
    models = {"a": tiny_bert(tokenizer, seed=0), "b": tiny_bert(tokenizer, seed=1)}
    scores = score_classifiers(models, examples, gold, teacher_probs=soft, batch_size=4)

    assert set(scores) == {"a", "b"}
    for name, model in models.items():
        probs = predict_probs(model, examples, batch_size=3)
        assert probs.shape == (10, 2)
        expected = class_scores(probs, gold, soft)
        assert scores[name].accuracy == pytest.approx(expected.accuracy)
        assert scores[name].ece == pytest.approx(expected.ece, abs=1e-6)
        assert set(scores[name].examples_per_second) == {1, 32}
        assert all(v > 0 for v in scores[name].examples_per_second.values())
    assert examples_per_second(models["a"], examples, 4, repeats=1) > 0
