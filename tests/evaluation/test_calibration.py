"""Expected calibration error against a hand computation: a calibrated model scores 0,
an overconfident one its gap; the class-wise variant; scores turned into probabilities."""
import numpy as np
import pytest

from featbank.evaluation.calibration import (
    classwise_ece,
    expected_calibration_error,
    probabilities,
    reliability,
)

CLASSES = np.array(["a", "b"])


def test_ece_by_hand():
    # 10 images, each at confidence 0.9 for its top class; 6 right: |0.6 - 0.9| = 0.3
    probs = np.tile([[0.9, 0.1]], (10, 1))
    y = np.array(["a"] * 6 + ["b"] * 4)
    assert expected_calibration_error(y, probs, CLASSES) == pytest.approx(0.3)
    # two bins: confidence 0.9 (9 of 10 right) and 0.6 (6 of 10 right): calibrated
    probs = np.r_[np.tile([[0.9, 0.1]], (10, 1)), np.tile([[0.6, 0.4]], (10, 1))]
    y = np.array(["a"] * 9 + ["b"] + ["a"] * 6 + ["b"] * 4)
    assert expected_calibration_error(y, probs, CLASSES) == pytest.approx(0.0, abs=1e-12)


def test_classwise_ece_averages_each_class_s_own_gap():
    probs = np.tile([[0.9, 0.1]], (10, 1))
    y = np.array(["a"] * 6 + ["b"] * 4)
    # class a: confidence 0.9, frequency 0.6 -> 0.3; class b: 0.1 vs 0.4 -> 0.3
    assert classwise_ece(y, probs, CLASSES) == pytest.approx(0.3)
    Y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])  # multi-label: each label on its own
    probs = np.array([[0.5, 0.5]] * 4)
    assert expected_calibration_error(Y, probs, CLASSES) == pytest.approx(0.0)


def test_scores_become_probabilities_and_reliability_bins_count_them():
    scores = np.array([[2.0, -1.0], [0.0, 0.0]])
    p = probabilities(scores)
    assert np.allclose(p.sum(1), 1) and p[0, 0] > 0.9 and p[1, 0] == pytest.approx(0.5)
    assert probabilities(p) is not None and np.allclose(probabilities(p), p)
    bins = reliability(np.array(["a", "b"]), p, CLASSES, bins=10)
    assert bins["count"].sum() == 2 and len(bins["edges"]) == 11


def test_the_docstring_examples_run():
    import doctest

    import featbank.evaluation.calibration as module

    result = doctest.testmod(module)
    assert result.attempted >= 3 and result.failed == 0
