import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from featbank.heads.knn import CosineKNN, vote


def _data(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 240)
    X = rng.normal(size=(240, 12)) + 0.8 * np.eye(3, 12)[y]
    X[200:205] = X[:5]  # exact copies of training images in the validation part
    return X.astype(np.float32), np.array(["altar", "apse", "dome"])[y]


def test_one_search_scores_every_k_as_scikit_learn_would():
    X, y = _data()
    ks = [1, 2, 5, 10, 40]
    head = CosineKNN()
    scores = head.fit_path(X[:160], y[:160], X[160:], y[160:], "n_neighbors", ks)
    expected = {k: KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance",
                                        algorithm="brute").fit(X[:160], y[:160])
                .score(X[160:], y[160:]) for k in ks}
    assert dict(scores) == pytest.approx(expected)
    assert len(set(expected.values())) > 1
    best = max(ks, key=lambda k: (expected[k], -ks.index(k)))
    assert head.n_neighbors == best and head.estimator_.n_neighbors == best
    assert head.score(X[160:], y[160:]) == pytest.approx(expected[best])
    assert head.n_stored_ == 160 * 12


def test_more_neighbours_than_images_and_wrong_parameter():
    X, y = _data(seed=1)
    scores = CosineKNN().fit_path(X[:8], y[:8], X[8:20], y[8:20], "n_neighbors", [3, 50])
    assert [k for k, _ in scores] == [3, 8]
    with pytest.raises(ValueError, match="tunes n_neighbors"):
        CosineKNN().fit_path(X[:8], y[:8], X[8:20], y[8:20], "C", [1.0])


def test_an_exact_match_outvotes_everything():
    distance = np.array([[0.0, 0.1, 0.1], [0.5, 0.25, 1.0]])
    labels = np.array([[1, 0, 0], [0, 1, 1]])
    votes = vote(distance, labels, 2)
    assert votes.tolist() == [[0.0, 1.0], [2.0, 5.0]]
