"""Heads registry: name -> unfitted scikit-learn pipeline on cached features.

Every head is ``Pipeline([normalize, pca, head])`` built from shared options
(:class:`HeadOptions`), so ``clone``, ``get_params``, grid search and joblib
persistence work for all of them, the torch softmax head included. Adding a
head is one ``@register_head`` function.

Heads that can use the saved split's validation part say so with
``accepts_validation = True`` (softmax: early stopping; svm: choosing C);
:func:`fit_head` gives it to them after the pipeline's own transforms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted

from .softmax import SoftmaxClassifier

NORMALIZATIONS = ("standard", "l2", "none")


@dataclass(frozen=True)
class HeadOptions:
    """Options every head shares."""

    normalize: str = "standard"  # standard | l2 | none
    pca: int | None = None  # project to this many dimensions first
    balanced: bool = False  # class weights inversely proportional to class sizes
    seed: int = 0
    softmax_recipe: str = "fast"  # fast | paper

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalize!r}; use "
                             f"{', '.join(NORMALIZATIONS)}")
        if self.pca is not None and self.pca < 1:
            raise ValueError(f"--pca must be a positive number of dimensions, not {self.pca}")

    @property
    def class_weight(self) -> str | None:
        return "balanced" if self.balanced else None


class ValidatedLinearSVC(ClassifierMixin, BaseEstimator):
    """Linear SVM whose C is the one scoring best on validation data.

    Trained on the training data only; ``X_val`` / ``y_val`` choose C (a
    stratified ``validation_fraction`` of the training data when absent).
    """

    accepts_validation = True

    def __init__(self, Cs=(1e-3, 1e-2, 1e-1, 1.0), class_weight=None, validation_fraction=0.1,
                 max_iter=5000, random_state=0):
        self.Cs = Cs
        self.class_weight = class_weight
        self.validation_fraction = validation_fraction
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None):
        if X_val is None:
            X, X_val, y, y_val = train_test_split(X, y, test_size=self.validation_fraction,
                                                  random_state=self.random_state)
        self.val_scores_ = {}
        best = None
        # liblinear's dual solver is much faster unless samples far outnumber features
        # (1,124 x 512 heritage features: 1.9 s instead of 44 s at C=1).
        dual = np.shape(X)[0] < 10 * np.shape(X)[1]
        for C in self.Cs:
            model = LinearSVC(C=C, dual=dual, class_weight=self.class_weight,
                              max_iter=self.max_iter, random_state=self.random_state).fit(X, y)
            self.val_scores_[C] = model.score(X_val, y_val)
            if best is None or self.val_scores_[C] > self.val_scores_[best[0]]:
                best = (C, model)
        self.C_, self.estimator_ = best
        self.classes_ = self.estimator_.classes_
        self.n_features_in_ = self.estimator_.n_features_in_
        return self

    @property
    def coef_(self):
        return self.estimator_.coef_

    @property
    def intercept_(self):
        return self.estimator_.intercept_

    def decision_function(self, X):
        check_is_fitted(self, "estimator_")
        return self.estimator_.decision_function(X)

    def predict(self, X):
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)


HEADS: dict[str, Callable[[HeadOptions], BaseEstimator]] = {}


def register_head(name: str):
    def decorator(factory: Callable[[HeadOptions], BaseEstimator]):
        if name in HEADS:
            raise ValueError(f"head {name!r} is already registered")
        HEADS[name] = factory
        return factory
    return decorator


@register_head("softmax")
def _softmax(o: HeadOptions):
    return SoftmaxClassifier(recipe=o.softmax_recipe, class_weight=o.class_weight,
                             random_state=o.seed)


@register_head("svm")
def _svm(o: HeadOptions):
    return ValidatedLinearSVC(class_weight=o.class_weight, random_state=o.seed)


@register_head("rf")
def _rf(o: HeadOptions):
    return RandomForestClassifier(n_estimators=300, class_weight=o.class_weight,
                                  random_state=o.seed, n_jobs=1)


@register_head("logreg")
def _logreg(o: HeadOptions):
    return LogisticRegression(max_iter=2000, class_weight=o.class_weight, random_state=o.seed)


@register_head("knn")
def _knn(o: HeadOptions):
    return KNeighborsClassifier(n_neighbors=10, metric="cosine", weights="distance",
                                algorithm="brute")


def resolve_heads(names: str | list[str]) -> list[str]:
    """``"svm,rf"`` or ``"all"`` -> validated registry names."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if "all" in names:
        return list(HEADS)
    unknown = [n for n in names if n not in HEADS]
    if unknown or not names:
        raise ValueError(f"unknown head {', '.join(map(repr, unknown)) or '(none)'}; choose from "
                         f"{', '.join(HEADS)} or all")
    return list(dict.fromkeys(names))


def make_head(name: str, options: HeadOptions = HeadOptions()) -> Pipeline:
    """An unfitted pipeline: normalisation, optional PCA, then the head."""
    [name] = resolve_heads([name])
    scaler = {"standard": StandardScaler(), "l2": Normalizer(), "none": "passthrough"}
    pca = PCA(n_components=options.pca, random_state=options.seed) if options.pca else "passthrough"
    return Pipeline([("normalize", scaler[options.normalize]), ("pca", pca),
                     ("head", HEADS[name](options))])


def fit_head(pipeline: Pipeline, X, y, X_val=None, y_val=None) -> Pipeline:
    """Fit; a head that accepts validation data gets X_val through the same transforms."""
    head = pipeline[-1]
    if X_val is None or not getattr(head, "accepts_validation", False):
        return pipeline.fit(X, y)
    front = pipeline[:-1]  # shares its steps with ``pipeline``
    head.fit(front.fit_transform(X, y), y, X_val=front.transform(X_val), y_val=y_val)
    return pipeline


def n_parameters(pipeline: Pipeline) -> int:
    """Learned numbers in the fitted head (weights and biases, tree nodes, stored samples)."""
    head = pipeline[-1]
    if hasattr(head, "coef_"):
        return int(np.size(head.coef_) + np.size(head.intercept_))
    if hasattr(head, "estimators_"):
        return int(sum(tree.tree_.node_count for tree in head.estimators_))
    if hasattr(head, "_fit_X"):
        return int(np.size(head._fit_X))
    raise ValueError(f"cannot count the parameters of {type(head).__name__}")


def class_scores(pipeline: Pipeline, X) -> np.ndarray:
    """(n_samples, n_classes) scores in ``pipeline.classes_`` order, for top-k."""
    if hasattr(pipeline, "predict_proba"):  # False when the head has none
        return pipeline.predict_proba(X)
    scores = pipeline.decision_function(X)
    return scores if scores.ndim == 2 else np.column_stack([-scores, scores])
