"""Metrics of class scores: pure functions of arrays.

Top-1 and top-5 accuracy, balanced accuracy and macro-F1, and for multi-label
tasks mean average precision; with ``ci=True`` the 95 % bootstrap intervals
of :mod:`featbank.evaluation.stats`.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score

from featbank.evaluation.calibration import (
    classwise_ece,
    expected_calibration_error,
    probabilities,
)
from featbank.evaluation.stats import (
    accuracy_ci,
    map_resamples,
    mean_average_precision,
    percentile_interval,
)


def top_k_accuracy(y_true, scores: np.ndarray, classes, k: int) -> float:
    """Fraction of rows whose true class is among the k highest scores.

    scores : array of shape (n_samples, n_classes), columns in ``classes`` order.
    """
    classes = np.asarray(classes)
    k = min(k, len(classes))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(classes) else \
        np.tile(np.arange(len(classes)), (len(scores), 1))
    return float(np.mean((classes[top] == np.asarray(y_true)[:, None]).any(axis=1)))


def hits(y_true, scores: np.ndarray, classes) -> np.ndarray:
    """Per row, whether the highest score names its class (multi-label: one of its classes).

    y_true : labels (n,), or for a multi-label task a 0/1 matrix (n, n_classes)
    whose columns follow ``classes``.
    """
    y_true = np.asarray(y_true)
    if y_true.ndim == 2:
        return y_true[np.arange(len(y_true)), scores.argmax(axis=1)].astype(bool)
    return np.asarray(classes)[scores.argmax(axis=1)] == y_true


def metrics(y_true, scores: np.ndarray, classes, *, ci: bool = False, seed: int = 0) -> dict:
    """top1, top5, balanced_accuracy and macro_f1 of class scores (n_samples, n_classes).

    A multi-label task (``y_true`` a 0/1 matrix, see :func:`hits`) adds ``mAP``
    (macro average precision over the classes present; the per-class AP is in
    the reports, :func:`write_reports`); its top-k counts a row right when one of its classes is among the
    k highest scores, and balanced accuracy and F1 (single-label measures) are
    None. Every task adds ``ece`` and ``classwise_ece`` (15 bins;
    :mod:`featbank.evaluation.calibration`: scores that are not probabilities are a
    softmax, per label a sigmoid, first). ``ci`` adds 95 % bootstrap intervals
    ``top1_ci`` (and ``mAP_ci``, with ``mAP_resamples``, the mAP of each resample,
    for :func:`save_test_scores`; a results row leaves it out).
    """
    y_true = np.asarray(y_true)
    right = hits(y_true, scores, classes)
    probs = probabilities(scores, multi_label=y_true.ndim == 2)
    calibration = {"ece": expected_calibration_error(y_true, probs, classes),
                   "classwise_ece": classwise_ece(y_true, probs, classes)}
    if y_true.ndim == 2:
        k = min(5, y_true.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out = {"top1": float(right.mean()),
               "top5": float(np.take_along_axis(y_true, top, axis=1).any(axis=1).mean()),
               "balanced_accuracy": None, "macro_f1": None,
               "mAP": mean_average_precision(y_true, scores)[0]}
        if ci:
            out["mAP_resamples"] = map_resamples(y_true, scores, seed=seed)
            out["mAP_ci"] = percentile_interval(out["mAP_resamples"])
    else:
        y_pred = np.asarray(classes)[scores.argmax(axis=1)]
        out = {"top1": float(right.mean()),
               "top5": top_k_accuracy(y_true, scores, classes, 5),
               "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
               "macro_f1": float(f1_score(y_true, y_pred, average="macro",
                                          labels=np.unique(y_true), zero_division=0))}
    if ci:
        out["top1_ci"] = accuracy_ci(right, seed=seed)
    return {**out, **calibration}


# -- the results store --------------------------------------------------------


# -- per-model reports --------------------------------------------------------


# -- the table ----------------------------------------------------------------


def score_of(row: dict) -> tuple[str, float, list | None]:
    """(metric, value, 95 % interval) a table shows for a row: mAP for multi-label tasks."""
    return ("mAP", row["mAP"], row.get("mAP_ci")) if row.get("mAP") is not None else \
        ("top1", row["top1"], row.get("top1_ci"))
