import numpy as np
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier

from featbank.heads.forest import Forest


def _data(n, k, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return (rng.normal(size=(n, 16)) + 2 * np.eye(k, 16)[y % 16]).astype(np.float32), y


def test_small_collections_get_the_default_trees_and_many_classes_lighter_ones():
    X, y = _data(400, 4)
    small = Forest(n_estimators=20).fit(X, y)
    assert small.settings_ == {"n_estimators": 20, "max_samples": 400, "max_features": "sqrt",
                               "min_samples_leaf": 1}
    reference = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)
    assert np.mean(small.predict(X) == reference.predict(X)) >= 0.95
    assert len(small.estimators_) == 20 and small.predict_proba(X).shape == (400, 4)
    X, y = _data(600, 12, seed=1)
    capped = Forest(max_samples=200, large=1000).fit(X, y)
    assert capped.settings_ == {"n_estimators": 50, "max_samples": 200, "max_features": "log2",
                                "min_samples_leaf": 5}
    # each tree's bootstrap sample really holds at most 200 images
    assert len(capped.estimators_) == 50
    assert all(tree.tree_.n_node_samples[0] <= 200 for tree in capped.estimators_)
    assert clone(capped).get_params() == capped.get_params()
