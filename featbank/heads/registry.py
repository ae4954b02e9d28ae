"""Heads registry: name -> unfitted scikit-learn pipeline on cached features.

Every head is ``Pipeline([normalize, pca, head])`` built from shared options
(:class:`HeadOptions`), so ``clone``, ``get_params``, grid search and joblib
persistence work for all of them, the torch softmax head included. Adding a
head is one ``@register_head`` function; its ``grid`` names the
hyper-parameters chosen on the saved split's validation part.

:func:`fit_head` is the one place where that choice happens, for every head
that tunes: ``GridSearchCV`` over a ``PredefinedSplit`` (fit on the training
part, score on the validation part) searches the whole pipeline, so it stays
right when normalisation or PCA change; the chosen pipeline is then refitted
on the training part only. Heads that use validation data themselves
(softmax: early stopping) say so with ``accepts_validation = True``.

This module imports scikit-learn and torch only when a head is built, so the
command-line parsers can list the heads cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from featbank.core.errors import BadInput
from featbank.heads.recipes import RECIPES

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
        if self.softmax_recipe not in RECIPES:
            raise BadInput(f"unknown softmax recipe {self.softmax_recipe!r}; use "
                             f"{', '.join(RECIPES)}")
        if self.normalize not in NORMALIZATIONS:
            raise BadInput(f"unknown normalization {self.normalize!r}; use "
                             f"{', '.join(NORMALIZATIONS)}")
        if self.pca is not None and self.pca < 1:
            raise BadInput(f"--pca must be a positive number of dimensions, not {self.pca}")

    @property
    def class_weight(self) -> str | None:
        return "balanced" if self.balanced else None


@dataclass(frozen=True)
class HeadEntry:
    """A registry entry: ``factory(options)`` -> unfitted estimator; ``grid``: parameter ->
    values chosen on validation data, or a function of the options that gives them."""

    factory: Callable[[HeadOptions], object]
    grid: dict[str, tuple] | Callable[[HeadOptions], dict] = field(default_factory=dict)
    # one linear layer over the (normalised, projected) features: saliency can read the
    # fitted pipeline off as an exact torch layer (analysis.saliency)
    linear: bool = False

    def grid_for(self, options: HeadOptions) -> dict[str, tuple]:
        return dict(self.grid(options) if callable(self.grid) else self.grid)


HEADS: dict[str, HeadEntry] = {}


def register_head(name: str, *, grid=None, linear: bool = False):
    def decorator(factory: Callable[[HeadOptions], object]):
        if name in HEADS:
            raise BadInput(f"head {name!r} is already registered")
        HEADS[name] = HeadEntry(factory, grid if callable(grid) else dict(grid or {}), linear)
        return factory
    return decorator


# Grids run from the weakest regularisation to the strongest: the first point is a full
# fit, and each later one continues from the one before (see featbank.heads.linear).
SOFTMAX_ALPHAS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
C_GRID = (1.0, 0.1, 0.01, 0.001)


@register_head("softmax", grid=lambda o: {"alpha": SOFTMAX_ALPHAS} if o.softmax_recipe == "fast"
               else {}, linear=True)  # the paper's recipe is its exact settings: nothing to tune
def _softmax(o: HeadOptions):
    from featbank.heads.softmax import SoftmaxClassifier

    return SoftmaxClassifier(recipe=o.softmax_recipe, class_weight=o.class_weight,
                             random_state=o.seed)


@register_head("svm", grid={"C": C_GRID}, linear=True)
def _svm(o: HeadOptions):
    from featbank.heads.svm import LinearSVM

    return LinearSVM(class_weight=o.class_weight, random_state=o.seed)


@register_head("rf")
def _rf(o: HeadOptions):
    from featbank.heads.forest import Forest

    return Forest(class_weight=o.class_weight, random_state=o.seed)


@register_head("logreg", grid={"C": C_GRID}, linear=True)
def _logreg(o: HeadOptions):
    from featbank.heads.logreg import LogisticHead

    return LogisticHead(class_weight=o.class_weight, random_state=o.seed)


@register_head("knn", grid={"n_neighbors": (1, 3, 5, 10, 20, 40)})
def _knn(o: HeadOptions):
    from featbank.heads.knn import CosineKNN

    return CosineKNN()


def linear_heads() -> list[str]:
    """The registered heads that are one linear layer (``linear=True``)."""
    return [name for name, entry in HEADS.items() if entry.linear]


def resolve_heads(names: str | list[str]) -> list[str]:
    """``"svm,rf"`` or ``"all"`` -> validated registry names."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if "all" in names:
        return list(HEADS)
    unknown = [n for n in names if n not in HEADS]
    if unknown or not names:
        raise BadInput(f"unknown head {', '.join(map(repr, unknown)) or '(none)'}; choose from "
                         f"{', '.join(HEADS)} or all")
    return list(dict.fromkeys(names))


def make_head(name: str, options: HeadOptions = HeadOptions(), *, multi_label: bool = False):
    """An unfitted pipeline: normalisation, optional PCA, then the head.

    For a multi-label task (targets a 0/1 matrix) the head is wrapped in
    scikit-learn's ``OneVsRestClassifier``: one binary head per label (for
    softmax, a two-class softmax, which is a sigmoid with binary cross-entropy).
    """
    from sklearn.decomposition import PCA
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    [name] = resolve_heads([name])
    scaler = {"standard": StandardScaler(), "l2": Normalizer(), "none": "passthrough"}
    pca = PCA(n_components=options.pca, random_state=options.seed) if options.pca else "passthrough"
    head = HEADS[name].factory(options)
    return Pipeline([("normalize", scaler[options.normalize]), ("pca", pca),
                     ("head", OneVsRestClassifier(head) if multi_label else head)])


@dataclass
class Tuning:
    """What :func:`fit_head` chose: the head's parameters and every candidate's val score."""

    chosen: dict
    scores: list[tuple[dict, float]]


def fit_head(pipeline, X, y, X_val=None, y_val=None, *, grid: dict | None = None) -> Tuning | None:
    """Fit ``pipeline`` on (X, y), choosing ``grid`` (head parameter -> values) first.

    X : array of shape (n_train, n_features); X_val : (n_val, n_features) or None.
    With validation data, each grid point is fitted on (X, y) and scored
    (accuracy) on (X_val, y_val) through the whole pipeline. A head with a
    ``fit_path`` method (the linear heads, knn) does that itself for its one
    parameter, on transforms fitted once, warm-starting each point from the
    one before and ending fitted at the best; any other head goes through
    ``GridSearchCV``, and the best point is then refitted on (X, y) alone.
    Without validation data (no saved split), ``GridSearchCV`` with 3-fold
    cross-validation on (X, y) chooses. A head that accepts validation data
    gets X_val through the pipeline's own transforms. Returns the choice, or
    None when there was nothing to choose.
    """
    head = pipeline[-1]
    front = pipeline[:-1]  # shares its steps with ``pipeline``
    if np.ndim(y) == 2:  # multi-label: one-vs-rest heads, chosen by mean average precision
        tuning = _choose(pipeline, {f"estimator__{k}": v for k, v in grid.items()}, X, y,
                         X_val, y_val, scoring="average_precision") if grid else None
        pipeline.fit(X, y)
        return tuning
    if grid and X_val is not None and len(grid) == 1 and hasattr(head, "fit_path"):
        [(name, values)] = grid.items()
        scores = head.fit_path(front.fit_transform(X, y), y, front.transform(X_val), y_val,
                               name, list(values))
        return Tuning(chosen={name: head.get_params()[name]},
                      scores=[({name: v}, float(s)) for v, s in scores])
    tuning = _choose(pipeline, grid, X, y, X_val, y_val) if grid else None
    if X_val is None or not getattr(head, "accepts_validation", False):
        pipeline.fit(X, y)
    else:
        head.fit(front.fit_transform(X, y), y, X_val=front.transform(X_val), y_val=y_val)
    return tuning


def _choose(pipeline, grid: dict, X, y, X_val, y_val, scoring=None) -> Tuning:
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    params = {f"head__{k}": list(v) for k, v in grid.items()}
    if X_val is None:
        cv, X_all, y_all = 3, X, y
    else:  # -1: never a test fold (always fitted on); 0: the one test fold
        cv = PredefinedSplit(np.r_[np.full(len(X), -1), np.zeros(len(X_val), dtype=int)])
        X_all, y_all = np.concatenate([X, X_val]), np.concatenate([y, y_val])
    search = GridSearchCV(pipeline, params, cv=cv, refit=False, n_jobs=1, error_score="raise",
                          scoring=scoring)
    search.fit(X_all, y_all)
    pipeline.set_params(**search.best_params_)
    strip = lambda p: {k.removeprefix("head__").removeprefix("estimator__"): v  # noqa: E731
                       for k, v in p.items()}
    return Tuning(chosen=strip(search.best_params_),
                  scores=[(strip(p), float(s)) for p, s in
                          zip(search.cv_results_["params"], search.cv_results_["mean_test_score"])])


def n_parameters(pipeline) -> int:
    """Learned numbers in the fitted head (weights and biases, tree nodes, stored samples;
    summed over the per-label heads of a multi-label task)."""
    from sklearn.multiclass import OneVsRestClassifier

    head = pipeline[-1]
    if isinstance(head, OneVsRestClassifier):
        return sum(n_parameters([h]) for h in head.estimators_)
    if hasattr(head, "n_stored_"):
        return head.n_stored_
    if hasattr(head, "coef_"):
        return int(np.size(head.coef_) + np.size(head.intercept_))
    if hasattr(head, "estimators_"):
        return int(sum(tree.tree_.node_count for tree in head.estimators_))
    raise TypeError(f"cannot count the parameters of {type(head).__name__}")


def class_scores(pipeline, X) -> np.ndarray:
    """(n_samples, n_classes) scores in ``pipeline.classes_`` order, for top-k."""
    if hasattr(pipeline, "predict_proba"):  # False when the head has none
        return pipeline.predict_proba(X)
    return decision_scores(pipeline, X)


def decision_scores(pipeline, X) -> np.ndarray:
    """(n_samples, n_classes) decision scores; a binary head's one score s becomes (-s, s)."""
    scores = pipeline.decision_function(X)
    return scores if scores.ndim == 2 else np.column_stack([-scores, scores])
