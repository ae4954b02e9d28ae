"""The softmax head: one linear layer on cached features, trained with torch.

A scikit-learn estimator (clone, pipelines, grid search and joblib work);
learned weights are stored as numpy arrays (``coef_``, ``intercept_``), so a
fitted head pickles without torch state. It is :class:`featbank.heads.linear.TorchLinear`
with the multinomial (softmax cross-entropy) loss. Two recipes:

- ``paper``: Sabatelli et al. exactly: RMSprop lr 1e-3 (rho 0.9, eps 1e-8),
  batch 32, validation loss checked every epoch, early stopping after 7
  epochs without improvement, the best-validation-loss weights kept.
- ``fast`` (default): Adam (fused kernel) with batches of 1,024, validation
  checked twice an epoch, stopping after a window of checks (at least 32
  steps: one check at scale, an epoch on small data) that does not bring the
  best validation loss 2 % lower. The same selection rule (best validation
  loss), in far fewer passes over the data: at the Rijksmuseum shapes (~100k
  x 2048) it stops after 1.5 to 2 epochs where the paper's recipe runs 9 to
  12; see ``bench/bench_softmax.py`` for the measured
  speed-up and accuracies. On small collections the batch shrinks so that an
  epoch still has 32 steps; otherwise a 1,000-image collection would get 2
  steps an epoch and stop far too early.

``alpha`` (an L2 penalty) is chosen on the validation split along a
warm-started path (:meth:`~featbank.heads.linear.TorchLinear.fit_path`) when
featbank tunes the head. Validation data come from ``fit(X, y, X_val=...,
y_val=...)`` (the saved split's val part, as featbank passes it); without it,
a stratified ``validation_fraction`` of the training data is held out.
"""
from __future__ import annotations

from featbank.heads.linear import RECIPES, TorchLinear

__all__ = ["RECIPES", "SoftmaxClassifier"]


class SoftmaxClassifier(TorchLinear):
    """Multinomial logistic regression trained by mini-batch gradient descent in torch.

    Parameters are :class:`~featbank.heads.linear.TorchLinear`'s, less ``loss``.
    """

    loss = "multinomial"

    def __init__(self, recipe="fast", lr=None, batch_size=None, max_epochs=None, patience=None,
                 alpha=0.0, class_weight=None, validation_fraction=0.1, random_state=0):
        self.recipe = recipe
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.alpha = alpha
        self.class_weight = class_weight
        self.validation_fraction = validation_fraction
        self.random_state = random_state
