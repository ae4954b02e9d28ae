"""The kNN head: cosine distance, distance-weighted votes, k chosen on validation.

:meth:`CosineKNN.fit_path` finds each validation image's ``max(k)`` nearest
training images once and scores every k of the grid from that one search, so
choosing k costs one search instead of one per k. The votes are scikit-learn's
(``weights="distance"``: 1 / distance, and an exact match outvotes everything);
prediction uses ``KNeighborsClassifier`` itself.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier

from featbank.heads.wrapped import WrappedEstimator, check_training


class CosineKNN(WrappedEstimator, ClassifierMixin, BaseEstimator):
    """k nearest neighbours by cosine distance (brute force), votes weighted by 1 / distance."""

    def __init__(self, n_neighbors=10):
        self.n_neighbors = n_neighbors

    def _estimator(self, k: int):
        return KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance",
                                    algorithm="brute")

    def fit(self, X, y):
        X, y = check_training(X, y)
        return self._wrap(self._estimator(min(self.n_neighbors, len(y))).fit(X, y))

    def fit_path(self, X, y, X_val, y_val, name="n_neighbors", values=(10,)):
        """Score each k in ``values`` on (X_val, y_val) from one neighbour search; keep the
        best (the first of equals). Returns ``[(k, validation accuracy), ...]``."""
        if name != "n_neighbors":
            raise ValueError(f"{type(self).__name__} tunes n_neighbors, not {name!r}")
        self.n_neighbors = min(max(values), len(y))
        self.fit(X, y)
        distance, index = self.estimator_.kneighbors(X_val, self.n_neighbors)
        labels = np.searchsorted(self.classes_, np.asarray(y)[index])
        truth = np.asarray(y_val)
        scores = []
        for k in values:
            k = min(k, len(y))
            votes = vote(distance[:, :k], labels[:, :k], len(self.classes_))
            scores.append((k, float(np.mean(self.classes_[votes.argmax(1)] == truth))))
        best = max(scores, key=lambda s: s[1])[0]  # max keeps the first of equals
        self.estimator_.set_params(n_neighbors=best)
        self.n_neighbors = best
        return scores

    @property
    def n_stored_(self) -> int:
        return int(np.size(self.estimator_._fit_X))


def vote(distance: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes) summed weights of each row's neighbours: 1 / distance, or, where a
    row has an exact match (distance 0), 1 for the exact matches and 0 for the rest."""
    with np.errstate(divide="ignore"):
        weight = 1.0 / distance
    exact = np.isinf(weight)
    rows = exact.any(axis=1)
    weight[rows] = exact[rows]
    votes = np.zeros((len(distance), n_classes))
    np.add.at(votes, (np.arange(len(distance))[:, None], labels), weight)
    return votes
