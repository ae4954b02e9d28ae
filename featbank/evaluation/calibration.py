"""Whether a head's confidences can be trusted: expected calibration error, pure functions.

- :func:`expected_calibration_error` (ECE, Naeini et al. 2015; Guo et al. 2017):
  the top-label confidences in ``BINS`` equal-width bins, the mean over the
  test images of |accuracy of the bin - mean confidence of the bin|;
- :func:`classwise_ece` (Kull et al. 2019): the same for every class's own
  probability against whether the image is of that class, averaged over the
  classes; for a multi-label task each label is a binary problem, and its ECE
  is this one;
- :func:`reliability` gives the bins a reliability diagram draws.

Scores that are not probabilities (decision scores, logits) are turned into
them first (:func:`probabilities`): a softmax over the classes, or for a
multi-label task a sigmoid per label, so every head and fine-tuning run has an
ECE (the svm's is that of the softmax of its decision scores, which
``--calibrate`` is for).
"""
from __future__ import annotations

import numpy as np

BINS = 15


def probabilities(scores: np.ndarray, *, multi_label: bool = False) -> np.ndarray:
    """``scores`` (n, C) as probabilities: as they are when they already are (rows of
    non-negative numbers summing to 1; for a multi-label task, numbers in [0, 1]),
    else a softmax (multi-label: a sigmoid per column)."""
    scores = np.asarray(scores, dtype=np.float64)
    if multi_label:
        if scores.min() >= 0 and scores.max() <= 1:
            return scores
        return 1.0 / (1.0 + np.exp(-scores))
    if scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4):
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _binned_gap(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Sum over equal-width bins of (share of rows) x |mean correct - mean confidence|."""
    if len(confidence) == 0:
        return float("nan")
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    total = np.bincount(edges, minlength=bins)
    hit = np.bincount(edges, weights=correct.astype(np.float64), minlength=bins)
    conf = np.bincount(edges, weights=confidence, minlength=bins)
    used = total > 0
    return float(np.sum(np.abs(hit[used] - conf[used])) / len(confidence))


def expected_calibration_error(y_true, probs: np.ndarray, classes, *, bins: int = BINS
                               ) -> float:
    """Expected calibration error: the mean gap between confidence and accuracy over
    equal-width confidence bins, weighted by the bins' sizes (Guo et al. 2017).

    Parameters
    ----------
    y_true : array of shape (n,) of labels, or (n, C) of 0/1 for a multi-label task
    probs : array of shape (n, C)
        Predicted probabilities, columns in the order of ``classes``.
    classes : sequence of length C
    bins : int
        Equal-width confidence bins.

    Returns
    -------
    float
        The top-label ECE; for a multi-label task the class-wise ECE.

    Examples
    --------
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.2, 0.8]])
    >>> round(expected_calibration_error(["a", "b", "b", "b"], probs, ["a", "b"]), 3)
    0.3
    """
    y_true = np.asarray(y_true)
    if y_true.ndim == 2:
        return classwise_ece(y_true, probs, classes, bins=bins)
    classes = np.asarray(classes)
    top = probs.argmax(axis=1)
    return _binned_gap(probs[np.arange(len(probs)), top], classes[top] == y_true, bins)


def classwise_ece(y_true, probs: np.ndarray, classes, *, bins: int = BINS) -> float:
    """The mean over classes of the ECE of each class's probability (Kull et al. 2019)."""
    y_true = np.asarray(y_true)
    indicator = y_true.astype(bool) if y_true.ndim == 2 else \
        (y_true[:, None] == np.asarray(classes)[None, :])
    return float(np.mean([_binned_gap(probs[:, k], indicator[:, k], bins)
                          for k in range(probs.shape[1])]))


def reliability(y_true, probs: np.ndarray, classes, *, bins: int = BINS) -> dict:
    """The bins of a top-label reliability diagram: ``edges`` (bins + 1), and per bin its
    ``count``, ``accuracy`` and mean ``confidence`` (NaN where empty)."""
    classes = np.asarray(classes)
    top = probs.argmax(axis=1)
    confidence = probs[np.arange(len(probs)), top]
    correct = classes[top] == np.asarray(y_true)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, weights=correct.astype(float), minlength=bins) / count
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
    return {"edges": np.linspace(0, 1, bins + 1), "count": count, "accuracy": accuracy,
            "confidence": mean_conf}
