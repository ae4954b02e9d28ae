"""Uncertainty of test scores: bootstrap intervals, average precision, paired tests.

Pure functions of arrays. A bootstrap resample is represented by how many
times it draws each test image (a row of ``counts``, shape (b, n)), so one
sort per class serves every resample of average precision, and the top-1
interval is a matrix product.
"""
from __future__ import annotations

import base64

import numpy as np

RESAMPLES = 1000  # the minimum; percentile intervals need no more at 95 %
LEVEL = 0.95


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) draw counts of n rows sampled with replacement, n times each."""
    picks = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(picks.ravel(), minlength=resamples * n).reshape(resamples, n)


def bootstrap_ci(statistic, n: int, *, resamples: int = RESAMPLES, seed: int = 0,
                 level: float = LEVEL, chunk: int = 100) -> list[float]:
    """Percentile interval ``[low, high]`` of ``statistic`` over seeded bootstrap resamples.

    statistic : counts (b, n) -> (b,) values, the statistic of each resample.
    """
    if n == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    values = np.concatenate([statistic(resample_counts(n, min(chunk, resamples - start), rng))
                             for start in range(0, resamples, chunk)])
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def accuracy_ci(hits: np.ndarray, **kwargs) -> list[float]:
    """Bootstrap interval of the mean of per-image hits (0/1)."""
    hits = np.asarray(hits, dtype=float)
    return bootstrap_ci(lambda counts: counts @ hits / len(hits), len(hits), **kwargs)


def average_precision(Y: np.ndarray, scores: np.ndarray, counts: np.ndarray | None = None
                      ) -> np.ndarray:
    """Average precision of each class, per resample: array (b, k).

    Y : (n, k) 0/1 true labels; scores : (n, k); counts : (b, n) draw counts of
    each row (default: one, the test set itself). Tied scores form one
    threshold, as in scikit-learn's ``average_precision_score``: AP = sum over
    thresholds of (R_t - R_{t-1}) P_t. A class with no positive in a resample
    has AP nan there.
    """
    Y = np.asarray(Y, dtype=float)
    counts = np.ones((1, len(Y))) if counts is None else np.asarray(counts, dtype=float)
    out = np.full((len(counts), Y.shape[1]), np.nan)
    for j in range(Y.shape[1]):
        order = np.argsort(-scores[:, j], kind="stable")
        s, y = scores[order, j], Y[order, j]
        last = np.r_[s[1:] != s[:-1], True]  # the end of each group of tied scores
        w = counts[:, order]
        tp = np.cumsum(w * y, axis=1)[:, last]
        seen = np.cumsum(w, axis=1)[:, last]
        positives = tp[:, -1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(seen > 0, tp / seen, 0.0)
            recall = tp / positives
        gained = np.diff(recall, axis=1, prepend=0.0)
        ap = np.sum(gained * precision, axis=1)
        out[:, j] = np.where(positives[:, 0] > 0, ap, np.nan)
    return out


def mean_average_precision(Y: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """(mAP over the classes with a positive, per-class AP (nan without one))."""
    per_class = average_precision(Y, scores)[0]
    return float(np.nanmean(per_class)), per_class


def map_ci(Y: np.ndarray, scores: np.ndarray, **kwargs) -> list[float]:
    """Bootstrap interval of the mean average precision."""
    Y = np.asarray(Y)
    keep = Y.sum(axis=0) > 0
    Y, scores = Y[:, keep], np.asarray(scores)[:, keep]
    return bootstrap_ci(lambda counts: np.nanmean(average_precision(Y, scores, counts), axis=1),
                        len(Y), **kwargs)


def paired_map_p(Y: np.ndarray, a: np.ndarray, b: np.ndarray, *, resamples: int = RESAMPLES,
                 seed: int = 0, chunk: int = 100) -> float:
    """Two-sided paired bootstrap test of mean average precision: p-value that scores
    ``a`` and ``b`` (n, k) of the same test images rank them equally well.

    Every resample draws the same images for both, so what the two share (hard
    images, rare labels) cancels, as in McNemar's test. p is twice the smaller
    fraction of resamples in which one's mAP is at least the other's: the level
    at which the percentile interval of the difference would just reach 0
    (Efron & Tibshirani, ch. 16; Sakai 2006 for IR measures). Classes with no
    positive among the test images are left out, as in :func:`map_ci`.
    """
    Y = np.asarray(Y)
    keep = Y.sum(axis=0) > 0
    Y, a, b = Y[:, keep], np.asarray(a)[:, keep], np.asarray(b)[:, keep]
    rng = np.random.default_rng(seed)
    differences = []
    for start in range(0, resamples, chunk):
        counts = resample_counts(len(Y), min(chunk, resamples - start), rng)
        differences.append(np.nanmean(average_precision(Y, a, counts), axis=1)
                           - np.nanmean(average_precision(Y, b, counts), axis=1))
    d = np.concatenate(differences)
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar test of paired hits: p-value that a and b are equally accurate.

    Only the images one gets right and the other wrong count; under the null
    hypothesis each such image is a fair coin (binomial test, scipy).
    """
    from scipy.stats import binomtest

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def pack_hits(hits: np.ndarray) -> str:
    """Per-image hits as compact text (base64 of the packed bits), for a results row."""
    return base64.b64encode(np.packbits(np.asarray(hits, dtype=bool)).tobytes()).decode("ascii")


def unpack_hits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)
