"""The part every wrapping head shares: a fitted scikit-learn estimator in ``estimator_``.

The forest, knn, logreg and svm heads keep their own parameters (so
``clone`` and grid search see them) and fit an inner estimator; this mixin
records it and answers ``predict`` and, where the head has them
(``has_probabilities``), ``predict_proba`` through it.
"""
from __future__ import annotations

from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted


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
        return self.estimator_.predict_proba(X)

    def predict(self, X):
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)
