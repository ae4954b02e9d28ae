"""The logistic-regression head: scikit-learn's lbfgs, or the torch engine at scale.

Below :data:`featbank.heads.engines.TORCH_ABOVE`, scikit-learn's multinomial
``LogisticRegression`` (lbfgs), warm-started along the C grid. Above it, where
lbfgs takes many minutes per C, the torch engine minimises the same
multinomial objective (``alpha = 1 / (C * n_samples)``) by mini-batch Adam
with early stopping. One-vs-rest logistic losses were measured and left out:
on the 10 % Rijksmuseum material shapes (206 classes) they reached 0.84
validation accuracy where the multinomial loss reaches 0.93. C is chosen on
the saved validation split by :func:`featbank.heads.registry.fit_head`.
"""
from __future__ import annotations

from sklearn.linear_model import LogisticRegression

from featbank.heads.engines import EngineSwitch


class LogisticHead(EngineSwitch):
    """L2-regularised logistic regression with ``C`` (scikit-learn's meaning).

    engine : "auto" (by size), "sklearn" (lbfgs) or "torch" (mini-batch Adam with
    early stopping); both multinomial.
    """

    torch_loss = "multinomial"

    def __init__(self, C=1.0, class_weight=None, max_iter=2000, engine="auto", random_state=0):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.engine = engine
        self.random_state = random_state

    def _sklearn(self, n_samples: int, n_features: int):
        return LogisticRegression(C=self.C, max_iter=self.max_iter, warm_start=True,
                                  class_weight=self.class_weight,
                                  random_state=self.random_state)
