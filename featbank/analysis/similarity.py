"""Pure functions on feature matrices: linear CKA, precision@k and AP@k of ranked neighbours.

Arrays in, numbers out: no files, no collections. Shapes are (n_samples,
n_features) unless said otherwise.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from featbank.core.errors import BadInput

# -- linear CKA (Kornblith et al. 2019) ----------------------------------------------


class GramStats:
    """What linear CKA needs of one representation, computed once per matrix.

    Features are centred column-wise (float64). ``self_similarity`` is
    ||XᵀX||²_F, or its debiased (unbiased HSIC) counterpart.
    """

    def __init__(self, features: np.ndarray, *, debiased: bool = False):
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or len(x) < (4 if debiased else 2):
            raise BadInput(f"CKA needs a 2-D matrix with at least {4 if debiased else 2} rows, "
                             f"not shape {x.shape}")
        self.x = x - x.mean(axis=0, keepdims=True)
        self.debiased = debiased
        self.row_sq = np.einsum("ij,ij->i", self.x, self.x)  # ||x_i||², the Gram diagonal
        self.total_sq = float(self.row_sq.sum())
        self.self_similarity = self.similarity(self)

    def similarity(self, other: "GramStats") -> float:
        """<K, L>: the (debiased) dot product of the two centred linear Gram matrices."""
        xty = float(np.linalg.norm(self.x.T @ other.x) ** 2)
        if not self.debiased:
            return xty
        n = len(self.x)
        # Song et al.'s unbiased HSIC written in feature space (Kornblith et al.'s code):
        # the Gram diagonals are dropped without forming an n x n matrix.
        return (xty - n / (n - 2.0) * float(self.row_sq @ other.row_sq)
                + self.total_sq * other.total_sq / ((n - 1) * (n - 2)))


def linear_cka(x: np.ndarray, y: np.ndarray, *, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same n samples (rows aligned).

    Parameters
    ----------
    x, y : array of shape (n, d_x) and (n, d_y)
    debiased : bool
        The unbiased HSIC estimator, better for small n relative to the dimensions.

    Returns
    -------
    float
        1 for identical representations (and for any rotation or isotropic scaling
        of one), near 0 for unrelated ones.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 5))
    >>> round(linear_cka(x, 2 * x), 6)
    1.0
    """
    if len(x) != len(y):
        raise BadInput(f"CKA compares the same samples: {len(x)} rows vs {len(y)}")
    a, b = GramStats(x, debiased=debiased), GramStats(y, debiased=debiased)
    return cka_from_stats(a, b)


def cka_from_stats(a: GramStats, b: GramStats) -> float:
    denominator = np.sqrt(a.self_similarity * b.self_similarity)
    if not denominator > 0:
        raise BadInput("CKA is undefined for a constant representation (all rows equal)")
    return float(a.similarity(b) / denominator)


def cka_matrix(matrices: list[np.ndarray], *, debiased: bool = False,
               progress: Callable = lambda it, **_: it) -> np.ndarray:
    """Symmetric (m, m) matrix of linear CKA between every pair of ``matrices``."""
    stats = [GramStats(m, debiased=debiased) for m in progress(matrices, desc="centring")]
    m = len(stats)
    out = np.eye(m)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    for i, j in progress(pairs, desc="CKA pairs"):
        out[i, j] = out[j, i] = cka_from_stats(stats[i], stats[j])
    return out


# -- retrieval -------------------------------------------------------------------------

def precision_at_k(relevant: np.ndarray) -> np.ndarray:
    """The fraction of each query's k retrieved items that are relevant.

    Parameters
    ----------
    relevant : bool array of shape (n_queries, k)
        Whether each retrieved item is relevant, in rank order.

    Returns
    -------
    array of shape (n_queries,)

    Examples
    --------
    >>> precision_at_k([[True, False, True, False]]).tolist()
    [0.5]
    """
    return np.asarray(relevant, dtype=bool).mean(axis=1)


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """AP@k of each query: the sum of precision@i over the ranks i <= k holding a relevant
    item, divided by min(k, R), R the relevant items in the whole gallery.

    Parameters
    ----------
    relevant : bool array of shape (n_queries, k)
        Whether each retrieved item is relevant, in rank order.
    n_relevant : array of shape (n_queries,)
        R, the relevant items in the gallery per query; a query with R = 0 scores 0.

    Returns
    -------
    array of shape (n_queries,)

    Examples
    --------
    >>> average_precision_at_k([[True, False, True]], [2]).round(4).tolist()
    [0.8333]
    """
    relevant = np.asarray(relevant, dtype=bool)
    k = relevant.shape[1]
    ranks = np.arange(1, k + 1)
    precision_at_i = np.cumsum(relevant, axis=1) / ranks
    hits = (precision_at_i * relevant).sum(axis=1)
    denominator = np.minimum(k, np.asarray(n_relevant))
    return np.divide(hits, denominator, out=np.zeros(len(relevant)), where=denominator > 0)
