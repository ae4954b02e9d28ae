"""The random-forest head, with settings that finish a Rijksmuseum-scale cell in minutes.

scikit-learn's default forest grows every tree on a bootstrap of all the
training images, tries sqrt(d) features at every node and splits until the
leaves are pure. Each candidate split costs one pass over the classes, so
with a thousand classes a tree takes minutes: at 5 % of the Rijksmuseum
type task (8,500 images, 1,054 classes) one tree took 19 s and grew 280
levels deep, and 300 trees at full scale would take days on 2 cores.

This head grows 100 trees, each on a bootstrap sample of at most
``max_samples`` images, with scikit-learn's other defaults (sqrt(d)
features a node, leaves split to purity). Where the work of a tree, images
a tree x classes, is above ``large`` (10,000 images and 100 classes), it grows
50 trees that try log2(d) features a node and keep at least 5 images a leaf:
every node stores a value per class, and 100 trees with leaves of 3 held
4.4 GB at 5 % of the artist task. ``settings_`` records what was used. On heritage/test (1,124 training
images, 10 classes) these 100 trees score as the 300-tree default does;
``bench/bench_grid.py --reference`` measures the rest; docs/benchmarks.md has
the figures.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier

from featbank.heads.wrapped import WrappedEstimator, check_training


class Forest(WrappedEstimator, ClassifierMixin, BaseEstimator):
    """``RandomForestClassifier`` with a cap on each tree's images and lighter trees when
    classes are many (see the module's docstring)."""

    def __init__(self, n_estimators=100, max_samples=10_000, large=1e6, class_weight=None,
                 n_jobs=-1, random_state=0):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.large = large
        self.class_weight = class_weight
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, y):
        X, y = check_training(X, y)
        n = np.shape(X)[0]
        per_tree = min(n, self.max_samples) if self.max_samples else n
        large = per_tree * len(np.unique(y)) > self.large
        self.settings_ = {"n_estimators": min(self.n_estimators, 50) if large else self.n_estimators,
                          "max_samples": per_tree, "max_features": "log2" if large else "sqrt",
                          "min_samples_leaf": 5 if large else 1}
        return self._wrap(RandomForestClassifier(
            n_estimators=self.settings_["n_estimators"], max_samples=per_tree / n,
            max_features=self.settings_["max_features"],
            min_samples_leaf=self.settings_["min_samples_leaf"], class_weight=self.class_weight,
            n_jobs=self.n_jobs, random_state=self.random_state).fit(X, y))

    @property
    def estimators_(self):
        return self.estimator_.estimators_
