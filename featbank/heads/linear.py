"""One torch engine for the linear heads: softmax, logistic and squared-hinge losses.

:class:`TorchLinear` is a scikit-learn estimator that trains one linear layer
on cached features by mini-batch gradient descent, with early stopping on
the validation loss, and keeps the best-validation-loss weights. Its
``loss`` picks the model:

- ``multinomial``: softmax cross-entropy (the softmax head);
- ``logistic``: one binary logistic loss per class, one-vs-rest;
- ``squared_hinge``: one squared hinge per class, one-vs-rest, the loss of
  ``LinearSVC`` (svm at scale).

The objective is ``mean loss + alpha / 2 * ||W||^2`` (the bias is not
penalised). For one-vs-rest losses that is scikit-learn's objective with
``C = 1 / (alpha * n_samples)``, which is how :class:`EngineSwitch` maps C.

**Regularisation path.** :meth:`TorchLinear.fit_path` fits a grid of
``alpha`` values in the order given, each one warm-started from the one
before (its best weights and the optimiser's state), and keeps the point with
the best validation accuracy. featbank's grids go from the weakest penalty to
the strongest: the first point is a full fit, exactly the untuned head, so
tuning can only gain on validation. A continued point trains while it brings
the validation loss below the best so far, checked every eighth of an epoch
(``path_checks_per_epoch``) and given at least 8 optimiser steps
(``path_window_steps``; a quarter of an epoch on a small collection). A
value that does not help costs an eighth of an epoch and one validation
pass at the Rijksmuseum shapes, not a fresh training run, and once two
values in a row score below the best on validation the path stops: a
penalty stronger than two that already hurt is not tried. ``bench/bench_softmax.py`` measures the total.

**Engines.** :class:`featbank.heads.engines.EngineSwitch` is the base of the logreg and svm heads:
scikit-learn's exact solvers below :data:`TORCH_ABOVE` (samples x features x
classes), this engine above it, where those solvers take hours. The heads
stay scikit-learn estimators either way (``clone``, ``Pipeline``,
``GridSearchCV``).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y

from featbank.heads.recipes import RECIPES

LOSSES = ("multinomial", "logistic", "squared_hinge")
# Validation rows scored at a time: 10k x 2048 x 1,054 scores took 0.26 s in chunks of
# 1,024 against 0.37 s in chunks of 8,192 on 2 cores (the scores stay in cache).
EVAL_CHUNK = 1024
# Fewest images held out for early stopping when no validation data are given: on
# fewer, the stopping point would follow the luck of a handful of images, and the
# training loss is watched instead.
MIN_HELD_OUT = 20


class TorchLinear(ClassifierMixin, BaseEstimator):
    """A linear classifier trained in torch with early stopping on validation loss.

    Parameters
    ----------
    loss : "multinomial", "logistic" (one-vs-rest) or "squared_hinge" (one-vs-rest).
    alpha : L2 penalty on the weights, ``alpha / 2 * ||W||^2`` added to the mean loss.
    recipe : "fast" or "paper" (see :data:`RECIPES`); ``lr``, ``batch_size``,
        ``max_epochs`` and ``patience`` override single settings of it (None: the recipe's).
    class_weight : None or "balanced" (each sample's loss weighted by its class).
    validation_fraction : held out of the training data when no X_val is given.
    random_state : seed of initialisation, shuffling and the held-out part.
    """

    accepts_validation = True

    def __init__(self, loss="multinomial", alpha=0.0, recipe="fast", lr=None, batch_size=None,
                 max_epochs=None, patience=None, class_weight=None, validation_fraction=0.1,
                 random_state=0):
        self.loss = loss
        self.alpha = alpha
        self.recipe = recipe
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.class_weight = class_weight
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None):
        self.fit_path(X, y, X_val, y_val, "alpha", [self.alpha])
        return self

    def fit_path(self, X, y, X_val=None, y_val=None, name="alpha", values=(0.0,)):
        """Fit each ``alpha`` in ``values`` in turn, each warm-started from the one before.

        Leaves the estimator fitted at, and ``alpha`` set to, the value with the
        best validation accuracy (the first of equals). The path stops once two
        values in a row score below the best. Returns ``[(value, validation
        accuracy), ...]`` for the values tried, in the order given.
        """
        if name != "alpha":
            raise ValueError(f"{type(self).__name__} tunes alpha, not {name!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; use {', '.join(LOSSES)}")
        X, y = check_X_y(X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least two classes, got 1 class ({self.classes_.tolist()})")
        self.n_features_in_ = X.shape[1]
        X_val, y_val_index, X, y_index, n_unknown = self._validation(X, y_index, X_val, y_val)
        settings = self._settings()
        torch.manual_seed(self.random_state)
        layer = torch.nn.Linear(X.shape[1], len(self.classes_))
        _start_at_the_priors(layer, self.loss, y_index, self._class_weights(y_index))
        trainer = _Trainer(layer, torch.from_numpy(X), torch.from_numpy(y_index),
                           torch.from_numpy(X_val), torch.from_numpy(y_val_index),
                           loss=self.loss, weights=self._class_weights(y_index),
                           settings=settings, seed=self.random_state)
        scores, best = [], None
        for value in values:
            history = trainer.run(float(value))
            kept = min(history, key=lambda h: h["val_loss"])  # the weights the run kept
            # unknown validation classes count as errors, as they would in ``score``
            accuracy = kept["val_acc"] * len(y_val_index) / (len(y_val_index) + n_unknown)
            scores.append((value, accuracy))
            if best is None or accuracy > best[1]:
                best = (value, accuracy, copy.deepcopy(layer.state_dict()), history)
            elif len(scores) >= 2 and scores[-2][1] < best[1]:
                break  # two penalties in a row below the best: stronger ones are not tried
        value, _, state, self.history_ = best
        layer.load_state_dict(state)
        self.alpha = value
        self.best_epoch_ = min(self.history_, key=lambda h: h["val_loss"])["epoch"]
        self.n_epochs_ = trainer.epochs
        self.coef_ = layer.weight.detach().numpy().copy()
        self.intercept_ = layer.bias.detach().numpy().copy()
        return scores

    def _settings(self) -> dict:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown {type(self).__name__} recipe {self.recipe!r}; use {', '.join(RECIPES)}")
        settings = dict(RECIPES[self.recipe])
        for key in ("lr", "batch_size", "max_epochs", "patience"):
            if getattr(self, key) is not None:
                settings[key] = getattr(self, key)
        return settings

    def _validation(self, X, y_index, X_val, y_val):
        if X_val is None:
            counts = np.bincount(y_index)
            held = int(np.ceil(self.validation_fraction * len(y_index)))
            if counts.min() >= 2 and held >= max(len(counts), MIN_HELD_OUT) and \
                    len(y_index) - held >= len(counts):
                X, X_val, y_index, y_val_index = train_test_split(
                    X, y_index, test_size=held, stratify=y_index, random_state=self.random_state)
                return X_val, y_val_index, X, y_index, 0
            # Too few images to hold out enough of each class (a few-shot fit): early
            # stopping watches the training loss itself.
            return X, y_index, X, y_index, 0
        X_val = check_array(X_val, dtype=np.float32)
        y_val = np.asarray(y_val)
        known = np.isin(y_val, self.classes_)  # classes never seen in training cannot be scored
        X_val, y_val = X_val[known], y_val[known]
        if len(y_val) == 0:
            raise ValueError("no validation example has a class seen in training")
        return X_val, np.searchsorted(self.classes_, y_val), X, y_index, int((~known).sum())

    def _class_weights(self, y_index):
        if self.class_weight is None:
            return None
        if isinstance(self.class_weight, dict):  # class label -> weight, 1 for the others
            weights = np.array([self.class_weight.get(c, 1.0) for c in self.classes_])
        elif self.class_weight == "balanced":
            weights = compute_class_weight("balanced", classes=np.arange(len(self.classes_)),
                                           y=y_index)
        else:
            raise ValueError(f"class_weight must be None, 'balanced' or a dict of class -> "
                             f"weight, not {self.class_weight!r}")
        return torch.from_numpy(weights.astype(np.float32))

    def _scores(self, X):
        """(n, classes) scores, one column per class, binary tasks included."""
        check_is_fitted(self, "coef_")
        X = check_array(X, dtype=np.float32)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input")
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X):
        """(n, classes) scores; for two classes scikit-learn's 1-D convention, the score of
        ``classes_[1]`` over ``classes_[0]`` (what ``OneVsRestClassifier`` stacks)."""
        scores = self._scores(X)
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def _has_probabilities(self):
        return self.loss != "squared_hinge"

    @available_if(_has_probabilities)
    def predict_proba(self, X):
        """Softmax of the scores (multinomial); normalised sigmoids (one-vs-rest logistic,
        as scikit-learn's one-vs-rest classifiers do)."""
        scores = self._scores(X)
        if self.loss == "logistic":
            p = 1.0 / (1.0 + np.exp(-scores))
        else:
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X):
        best = self._scores(X).argmax(axis=1)  # checks fitted first
        return self.classes_[best]


def loss_value(loss: str, scores, y, weights=None, reduction: str = "mean"):
    """The per-sample loss of ``scores`` (n, k) against class indices ``y``, averaged
    (weighted by each sample's class weight, like ``cross_entropy``) or summed."""
    if loss == "multinomial":
        return torch.nn.functional.cross_entropy(scores, y, weight=weights, reduction=reduction)
    positive = torch.nn.functional.one_hot(y, scores.shape[1]).to(scores.dtype)
    if loss == "logistic":
        per = torch.nn.functional.binary_cross_entropy_with_logits(
            scores, positive, reduction="none").sum(1)
    elif loss == "squared_hinge":
        per = torch.relu(1 - (2 * positive - 1) * scores).square().sum(1)
    else:
        raise ValueError(f"unknown loss {loss!r}; use {', '.join(LOSSES)}")
    if weights is not None:
        w = weights[y]
        return (per * w).sum() if reduction == "sum" else (per * w).sum() / w.sum()
    return per.sum() if reduction == "sum" else per.mean()


@torch.no_grad()
def _start_at_the_priors(layer, loss: str, y_index: np.ndarray, weights=None) -> None:
    """One-vs-rest losses start with the biases of the best constant model (each class
    scored by its share of the training data); otherwise they spend epochs moving a
    thousand biases from 0 towards -1 at the optimiser's pace (36 epochs instead of
    11.5 for the squared hinge at 10 % of the Rijksmuseum material shapes). The
    multinomial loss keeps torch's initialisation (starting it at the log priors
    stopped it earlier and 1 to 2 points lower on the same data), unless class
    weights are given: then the weighted priors, which the weights may put far from
    even, are where the best constant model is."""
    counts = np.bincount(y_index, minlength=layer.out_features).astype(np.float64)
    if weights is not None:
        counts = counts * weights.numpy()
    elif loss == "multinomial":
        return
    prior = np.clip(counts / counts.sum(), 1e-6, 1 - 1e-6)
    if loss == "multinomial":
        layer.bias.copy_(torch.from_numpy(np.log(prior).astype(np.float32)))
        return
    if loss == "logistic":
        bias = np.log(prior / (1 - prior))
    else:  # argmin_s of p (1 - s)^2 + (1 - p) (1 + s)^2 on [-1, 1]
        bias = 2 * prior - 1
    layer.bias.copy_(torch.from_numpy(bias.astype(np.float32)))


def _optimizer(name: str, params, lr: float):
    if name == "rmsprop":  # Keras RMSprop defaults of the paper
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-8)
    if name == "adam":
        # The fused kernel is one pass over the weights instead of a dozen: on a
        # 2048 x 1000 layer it takes the optimiser step from ~10 ms to ~1.5 ms.
        # The L2 penalty is part of the loss, so plain Adam (no decoupled decay).
        return torch.optim.Adam(params, lr=lr, fused=True)
    raise ValueError(f"unknown optimizer {name!r}; use rmsprop or adam")


def _stalled(losses: list[float], patience: int, tol: float) -> bool:
    """True when the last ``patience`` checks did not bring the best loss ``tol``
    (relative) below the best before them. With ``tol=0`` this is Keras'
    EarlyStopping; a positive ``tol`` ends a plateau that creeps down by a fraction
    of a percent per check, but not a slow, steady decline of ``tol`` per window."""
    if len(losses) <= patience:
        return False
    return min(losses[-patience:]) >= min(losses[:-patience]) * (1 - tol)


class _Trainer:
    """Mini-batch training of one layer, resumable with another ``alpha`` (the path)."""

    def __init__(self, layer, X, y, X_val, y_val, *, loss, weights, settings, seed):
        self.layer, self.X, self.y, self.X_val, self.y_val = layer, X, y, X_val, y_val
        self.loss, self.weights, self.settings = loss, weights, settings
        self.optimizer = _optimizer(settings["optimizer"], layer.parameters(), settings["lr"])
        self.generator = torch.Generator().manual_seed(seed)
        n = len(X)
        # Small data: smaller batches, so an epoch still takes several steps.
        self.batch = max(1, min(settings["batch_size"], -(-n // settings["min_steps_per_epoch"])))
        self.steps = -(-n // self.batch)
        self.epochs = 0.0  # trained so far, over the whole path
        self.best_loss = float("inf")  # best validation loss over the whole path

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        loss, correct = 0.0, 0
        for start in range(0, len(self.X_val), EVAL_CHUNK):
            scores = self.layer(self.X_val[start:start + EVAL_CHUNK])
            target = self.y_val[start:start + EVAL_CHUNK]
            loss += loss_value(self.loss, scores, target, self.weights, reduction="sum").item()
            correct += (scores.argmax(1) == target).sum().item()
        if self.weights is not None:  # the weighted mean, like the training loss
            loss = loss * len(self.y_val) / self.weights[self.y_val].sum().item()
        return loss / len(self.X_val), correct / len(self.X_val)

    def run(self, alpha: float) -> list[dict]:
        """Train at ``alpha`` until validation loss stalls; leaves the best weights of
        this run in the layer and returns its history (one entry per check)."""
        settings, layer = self.settings, self.layer
        # A continued run is measured against the best loss so far: it stops after one
        # patience window unless it improves on it.
        continued = self.best_loss != float("inf")
        losses = [self.best_loss] if continued else []
        tol = 0.0 if continued else settings["tol"]
        phase = "path_" if continued else ""  # the path's settings, or the first fit's
        checks = settings[phase + "checks_per_epoch"]
        check_at = {round(self.steps * (k + 1) / checks) for k in range(checks)}
        # The patience window, in checks, spans at least *window_steps optimiser steps:
        # on small data (32 steps an epoch) a whole epoch, at scale as few checks as that.
        patience = max(settings[phase + "patience"],
                       -(-settings[phase + "window_steps"] * checks // self.steps))
        history, best_state, best_loss = [], None, float("inf")
        for _ in range(settings["max_epochs"]):
            order = torch.randperm(len(self.X), generator=self.generator)
            for step in range(self.steps):
                rows = order[step * self.batch:(step + 1) * self.batch]
                loss = loss_value(self.loss, layer(self.X[rows]), self.y[rows], self.weights)
                if alpha:
                    loss = loss + 0.5 * alpha * layer.weight.square().sum()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if step + 1 not in check_at:
                    continue
                val_loss, val_acc = self.evaluate()
                history.append({"epoch": round(self.epochs + (step + 1) / self.steps, 3),
                                "alpha": alpha, "train_loss": loss.item(),
                                "val_loss": val_loss, "val_acc": val_acc})
                losses.append(val_loss)
                if val_loss < best_loss:
                    best_loss, best_state = val_loss, copy.deepcopy(layer.state_dict())
                if _stalled(losses, patience, tol):
                    break
            else:
                self.epochs += 1
                continue
            self.epochs = history[-1]["epoch"]
            break
        layer.load_state_dict(best_state)
        self.best_loss = min(self.best_loss, best_loss)
        return history


