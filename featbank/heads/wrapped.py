"""The part every wrapping head shares: a fitted scikit-learn estimator in ``estimator_``.

The forest, knn, logreg and svm heads keep their own parameters (so
``clone`` and grid search see them) and fit an inner estimator; this mixin
records it and answers ``predict`` and, where the head has them
(``has_probabilities``), ``predict_proba`` through it.
"""
from __future__ import annotations

import numpy as np
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y


def check_training(X, y):
    """Dense, finite float features (n, d) and class labels (n,), refused otherwise with
    scikit-learn's messages (sparse input, NaN, a continuous target, 1-D X, no rows)."""
    X, y = check_X_y(X, y, dtype=[np.float64, np.float32])
    check_classification_targets(y)
    if len(np.unique(y)) < 2:
        raise ValueError(f"need at least two classes, got 1 class ({np.unique(y).tolist()})")
    return X, y


class WrappedEstimator:
    has_probabilities = True

    def _wrap(self, estimator):
        self.estimator_ = estimator
        self.classes_ = estimator.classes_
        self.n_features_in_ = estimator.n_features_in_
        return self

    @available_if(lambda self: self.has_probabilities)
    def predict_proba(self, X):
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict_proba(check_array(X, dtype=[np.float64, np.float32]))

    def predict(self, X):
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(check_array(X, dtype=[np.float64, np.float32]))
