"""Uncertainty of test scores: bootstrap intervals, average precision, paired tests.

Pure functions of arrays. A bootstrap resample is represented by how many
times it draws each test image (a row of ``counts``, shape (b, n)), so one
sort per class serves every resample of average precision, and the top-1
interval is a matrix product.
"""
from __future__ import annotations

import base64
import hashlib

import numpy as np

RESAMPLES = 1000  # the minimum; percentile intervals need no more at 95 %
LEVEL = 0.95
CHUNK = 100  # resamples drawn at a time (a chunk of counts is CHUNK x n)


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) draw counts of n rows sampled with replacement, n times each."""
    picks = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(picks.ravel(), minlength=resamples * n).reshape(resamples, n)


def bootstrap_values(statistic, n: int, *, resamples: int = RESAMPLES, seed: int = 0
                     ) -> np.ndarray:
    """``statistic`` of each seeded bootstrap resample of n rows: array (resamples,).

    statistic : counts (b, n) -> (b,) values. The same (n, resamples, seed) draw
    the same resamples (``resamples_digest`` tells), so statistics of two models
    computed apart are paired resample by resample.
    """
    rng = np.random.default_rng(seed)
    return np.concatenate([statistic(resample_counts(n, min(CHUNK, resamples - start), rng))
                           for start in range(0, resamples, CHUNK)])


def resamples_digest(n: int, *, resamples: int = RESAMPLES, seed: int = 0) -> str:
    """A fingerprint of the resamples :func:`bootstrap_values` draws (its first chunk):
    values with equal digests were computed on the same resamples."""
    counts = resample_counts(n, min(CHUNK, resamples), np.random.default_rng(seed))
    return hashlib.sha256(counts.astype(np.int64).tobytes()).hexdigest()[:16]


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float]:
    """The central ``level`` percentile interval ``[low, high]`` of bootstrap values."""
    if len(values) == 0:
        return [float("nan"), float("nan")]
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_ci(statistic, n: int, *, resamples: int = RESAMPLES, seed: int = 0,
                 level: float = LEVEL) -> list[float]:
    """Percentile interval ``[low, high]`` of ``statistic`` over seeded bootstrap resamples
    (see :func:`bootstrap_values`)."""
    if n == 0:
        return [float("nan"), float("nan")]
    return percentile_interval(bootstrap_values(statistic, n, resamples=resamples, seed=seed),
                               level)


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


def map_resamples(Y: np.ndarray, scores: np.ndarray, *, resamples: int = RESAMPLES,
                  seed: int = 0) -> np.ndarray:
    """Mean average precision of each seeded bootstrap resample of the test images:
    array (resamples,). Classes with no positive among the test images are left out."""
    Y = np.asarray(Y)
    if len(Y) == 0:
        return np.empty(0)
    keep = Y.sum(axis=0) > 0
    Y, scores = Y[:, keep], np.asarray(scores)[:, keep]
    return bootstrap_values(lambda counts: np.nanmean(average_precision(Y, scores, counts), axis=1),
                            len(Y), resamples=resamples, seed=seed)


def map_ci(Y: np.ndarray, scores: np.ndarray, **kwargs) -> list[float]:
    """Bootstrap interval of the mean average precision."""
    return percentile_interval(map_resamples(Y, scores, **kwargs))


def paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired bootstrap test from two models' statistics on the same resamples
    (:func:`bootstrap_values` with equal n, resamples and seed): p-value that they are
    equal.

    Every resample draws the same images for both, so what the two share (hard
    images, rare labels) cancels, as in McNemar's test. p is twice the smaller
    fraction of resamples in which one's statistic is at least the other's: the
    level at which the percentile interval of the difference would just reach 0
    (Efron & Tibshirani, ch. 16; Sakai 2006 for IR measures).
    """
    d = np.asarray(a) - np.asarray(b)
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))


def paired_map_p(Y: np.ndarray, a: np.ndarray, b: np.ndarray, *, resamples: int = RESAMPLES,
                 seed: int = 0) -> float:
    """Paired bootstrap test of mean average precision (:func:`paired_p`): p-value that
    scores ``a`` and ``b`` (n, k) of the same test images rank them equally well."""
    return paired_p(map_resamples(Y, a, resamples=resamples, seed=seed),
                    map_resamples(Y, b, resamples=resamples, seed=seed))


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
