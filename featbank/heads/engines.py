"""The logreg and svm heads' two engines: scikit-learn's exact solvers below a size, the
torch engine (:class:`featbank.heads.linear.TorchLinear`) above it, where those
solvers take hours. Either way the head stays a scikit-learn estimator (``clone``,
``Pipeline``, ``GridSearchCV``).
"""
from __future__ import annotations

import copy

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from featbank.heads.linear import TorchLinear
from featbank.heads.wrapped import WrappedEstimator, check_training

# samples x features x classes above which logreg and svm use the torch engine: at
# 1e9 (e.g. 5,000 x 2,048 x 100) liblinear's dual SVM takes about a minute on 2 cores
# and lbfgs about 20 s; at 20k x 2048 x 206 (8e9) they took 254 s and 55 s.
TORCH_ABOVE = 1e9


class EngineSwitch(WrappedEstimator, ClassifierMixin, BaseEstimator):
    """Base of heads with a scikit-learn solver below :data:`TORCH_ABOVE` and the torch
    engine above it, both tuned over ``C`` (``alpha = 1 / (C * n_samples)`` in torch).

    Subclasses set ``torch_loss`` and build the scikit-learn estimator in
    ``_sklearn(n_samples, n_features)``, and ``has_probabilities`` where the loss
    gives them, ``torch_above`` where their solver slows down sooner, and
    ``torch_patience`` where their loss needs a longer stopping window;
    ``engine`` is "auto", "sklearn" or "torch".
    """

    accepts_validation = True
    torch_loss = "logistic"
    torch_above = 1.0  # a subclass's switch point, as a fraction of TORCH_ABOVE
    torch_patience = None  # checks without gain before the torch engine stops (None: the recipe's)

    def _engine(self, X, y) -> str:
        if self.engine not in ("auto", "sklearn", "torch"):
            raise ValueError(f"engine must be auto, sklearn or torch, not {self.engine!r}")
        if self.engine != "auto":
            return self.engine
        size = np.shape(X)[0] * np.shape(X)[1] * len(np.unique(y))
        return "torch" if size > TORCH_ABOVE * self.torch_above else "sklearn"

    def _torch(self):
        return TorchLinear(loss=self.torch_loss, class_weight=self.class_weight,
                           patience=self.torch_patience, random_state=self.random_state)

    def fit(self, X, y, X_val=None, y_val=None):
        self.fit_path(X, y, X_val, y_val, "C", [self.C])
        return self

    def fit_path(self, X, y, X_val=None, y_val=None, name="C", values=(1.0,)):
        """Fit each C in ``values`` in turn (warm-started where the solver can be); keep
        the best on validation accuracy (the first of equals). Returns
        ``[(C, validation accuracy), ...]``."""
        if name != "C":
            raise ValueError(f"{type(self).__name__} tunes C, not {name!r}")
        X, y = check_training(X, y)
        self.engine_ = self._engine(X, y)
        if self.engine_ == "torch":
            estimator = self._torch()
            n = np.shape(X)[0]
            alphas = [1.0 / (c * n) for c in values]
            scores = estimator.fit_path(X, y, X_val, y_val, "alpha", alphas)
            scores = [(c, s) for c, (_, s) in zip(values, scores)]
            best = values[alphas.index(estimator.alpha)]
        else:
            scores, best, estimator = [], None, self._sklearn(*np.shape(X))
            for c in values:
                estimator.set_params(C=c).fit(X, y)
                score = estimator.score(X_val, y_val) if X_val is not None else float("nan")
                scores.append((c, score))
                if best is None or score > best[1]:
                    best = (c, score, copy.deepcopy(estimator))
            best, _, estimator = best
        self.C = best
        self._wrap(estimator)
        # iterations of the solver (sklearn's, the largest of one-vs-rest's) or epochs
        self.n_iter_ = int(np.max(getattr(estimator, "n_iter_", getattr(estimator, "n_epochs_", 0))))
        return scores

    @property
    def coef_(self):
        return self.estimator_.coef_

    @property
    def intercept_(self):
        return self.estimator_.intercept_

    def decision_function(self, X):
        check_is_fitted(self, "estimator_")
        return self.estimator_.decision_function(X)
