"""The linear SVM head: liblinear in its faster formulation, or the torch engine at scale.

scikit-learn's ``dual="auto"`` solves the primal whenever samples outnumber
features, which on cached CNN features is often far slower: 1,124 x 512
heritage features took 44 s primal and 1.9 s dual at C=1. Above
:data:`featbank.heads.engines.TORCH_ABOVE` (a tenth of it: liblinear slows down sooner
than lbfgs) the same one-vs-rest squared-hinge objective is trained by the
torch engine instead. C is chosen on the saved
validation split by :func:`featbank.heads.registry.fit_head`.
"""
from __future__ import annotations

from sklearn.svm import LinearSVC

from featbank.heads.engines import EngineSwitch


class LinearSVM(EngineSwitch):
    """One-vs-rest squared-hinge linear SVM (``LinearSVC``'s objective).

    engine : "auto" (by size), "sklearn" (``LinearSVC``, dual unless samples
    outnumber features ten to one) or "torch".
    """

    torch_loss = "squared_hinge"
    # liblinear's dual solver slows down long before lbfgs: over 4.5 minutes for the C
    # grid at 4.5k x 512 x 206 classes (5e8) on overlapping synthetic classes.
    torch_above = 0.1
    # The squared hinge creeps down for longer than the logistic losses: with the fast
    # recipe's half-epoch window at 100k images it stopped 0.9-3 points lower than with
    # a window of one epoch (2 checks), which it keeps.
    torch_patience = 2
    has_probabilities = False

    def __init__(self, C=1.0, class_weight=None, max_iter=5000, engine="auto", random_state=0):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.engine = engine
        self.random_state = random_state

    def _sklearn(self, n_samples: int, n_features: int):
        return LinearSVC(C=self.C, dual=n_samples < 10 * n_features,
                         class_weight=self.class_weight, max_iter=self.max_iter,
                         random_state=self.random_state)
