import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV

from featbank.heads.linear import _stalled
from featbank.heads.registry import (
    HEADS,
    HeadOptions,
    class_scores,
    fit_head,
    make_head,
    n_parameters,
    register_head,
    resolve_heads,
)
from featbank.heads.softmax import SoftmaxClassifier


def _toy(seed=0):
    X, y = make_blobs(n_samples=300, centers=4, n_features=16, cluster_std=1.0, random_state=seed)
    names = np.array(["altar", "apse", "dome", "vault"])[y]
    return X.astype(np.float32), names


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_known_answer_clone_and_pickle(name):
    X, y = _toy()
    head = make_head(name, HeadOptions(seed=1))
    fitted = clone(head)
    fit_head(fitted, X[:200], y[:200], X[200:250], y[200:250], grid=HEADS[name].grid_for(HeadOptions()))
    assert fitted.score(X[250:], y[250:]) >= 0.95
    again = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(again.predict(X[250:]), fitted.predict(X[250:]))
    scores = class_scores(fitted, X[250:])
    assert scores.shape == (50, 4) and list(fitted.classes_) == ["altar", "apse", "dome", "vault"]
    assert n_parameters(fitted) > 0
    assert clone(head).get_params()["head"].get_params() == head.get_params()["head"].get_params()


def test_shared_options_reach_the_fitted_pipeline():
    X, y = _toy(seed=2)
    l2 = make_head("logreg", HeadOptions(normalize="l2"))
    fit_head(l2, X[:250], y[:250])
    assert np.allclose(np.linalg.norm(l2[:-1].transform(X[250:]), axis=1), 1)
    assert l2.score(X[250:], y[250:]) >= 0.9
    pca = make_head("logreg", HeadOptions(pca=5))
    fit_head(pca, X[:250], y[:250])
    assert pca["pca"].n_components_ == 5 and n_parameters(pca) == 5 * 4 + 4
    raw = make_head("logreg", HeadOptions(normalize="none"))
    fit_head(raw, X[:250], y[:250])
    assert raw["normalize"] == "passthrough"


@pytest.mark.parametrize("name", ["logreg", "softmax", "svm"])
def test_balanced_weights_change_what_is_learned(name):
    rng = np.random.default_rng(0)  # a rare class overlapping a common one
    X = np.r_[rng.normal(0, 1, (300, 2)), rng.normal(1, 1, (15, 2))].astype(np.float32)
    y = np.array(["common"] * 300 + ["rare"] * 15)
    predicted = {}
    for balanced in (False, True):
        pipeline = make_head(name, HeadOptions(balanced=balanced))
        fit_head(pipeline, X, y)
        predicted[balanced] = np.mean(pipeline.predict(X) == "rare")
    assert predicted[True] > 2 * predicted[False]


def test_softmax_in_grid_search():
    X, y = _toy(seed=3)
    search = GridSearchCV(SoftmaxClassifier(max_epochs=5), {"lr": [1e-3, 1e-2]}, cv=2).fit(X, y)
    assert search.best_score_ >= 0.9


def _val_loss(head, X, y):
    logits = X @ head.coef_.T + head.intercept_
    logits -= logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.mean(log_p[np.arange(len(y)), np.searchsorted(head.classes_, y)])


def test_softmax_paper_recipe_stops_early_and_keeps_the_best():
    X, y = _toy(seed=4)
    head = SoftmaxClassifier(recipe="paper").fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    assert head.n_epochs_ - head.best_epoch_ == 7  # patience 7, then stop
    best = min(head.history_, key=lambda h: h["val_loss"])
    assert best["epoch"] == head.best_epoch_
    assert _val_loss(head, X[200:], y[200:]) == pytest.approx(best["val_loss"], rel=1e-4)


def test_softmax_fast_recipe_stops_after_an_epoch_without_a_2_percent_gain():
    X, y = make_blobs(n_samples=3000, centers=6, n_features=32, cluster_std=8.0, random_state=6)
    X = X.astype(np.float32)
    head = SoftmaxClassifier().fit(X[:2000], y[:2000], X_val=X[2000:2500], y_val=y[2000:2500])
    losses = [h["val_loss"] for h in head.history_]
    # 2000 images: batch 63 so that an epoch has 32 steps; 2 checks an epoch.
    assert [h["epoch"] for h in head.history_[:4]] == [0.5, 1.0, 1.5, 2.0]
    assert head.n_epochs_ < 50  # stopped early, not at max_epochs
    # Training stops at the first epoch (2 checks) that does not bring the best
    # validation loss 2 % lower than before it, not earlier.
    stalled = [min(losses[k - 2:k]) >= min(losses[:k - 2]) * 0.98 for k in range(3, len(losses) + 1)]
    assert stalled[-1] and not any(stalled[:-1])
    best = min(head.history_, key=lambda h: h["val_loss"])
    assert head.best_epoch_ == best["epoch"]
    assert _val_loss(head, X[2000:2500], y[2000:2500]) == pytest.approx(best["val_loss"], rel=1e-4)
    assert head.score(X[2500:], y[2500:]) >= 0.8


def test_softmax_fast_recipe_patience_spans_32_steps_not_a_whole_epoch_at_scale():
    X, y = make_blobs(n_samples=3000, centers=6, n_features=32, cluster_std=8.0, random_state=6)
    X = X.astype(np.float32)
    # batches of 16: 125 steps an epoch, 62 to 63 a check, so one check is the window
    head = SoftmaxClassifier(batch_size=16).fit(X[:2000], y[:2000], X_val=X[2000:2500],
                                                y_val=y[2000:2500])
    losses = [h["val_loss"] for h in head.history_]
    assert [h["epoch"] for h in head.history_[:2]] == [0.496, 1.0]
    stalled = [losses[k - 1] >= min(losses[:k - 1]) * 0.98 for k in range(2, len(losses) + 1)]
    assert stalled[-1] and not any(stalled[:-1])
    assert head.score(X[2500:], y[2500:]) >= 0.8


def test_stall_rule_ends_plateaus_not_slow_declines():
    steady = [0.995 ** k for k in range(40)]  # 0.5 % a check: 2 % an epoch of 4 checks
    assert not any(_stalled(steady[:k], 4, 0.01) for k in range(1, 41))
    creeping = [1.0, 0.5, 0.499, 0.498, 0.497, 0.4965]  # 0.7 % in the last 4 checks
    assert _stalled(creeping, 4, 0.01) and not _stalled(creeping, 4, 0.0)
    assert not _stalled(creeping[:4], 4, 0.01)  # needs a loss before the window


def test_softmax_errors():
    X, y = _toy()
    with pytest.raises(ValueError, match="unknown SoftmaxClassifier recipe"):
        SoftmaxClassifier(recipe="slow").fit(X, y)
    with pytest.raises(ValueError, match="two classes"):
        SoftmaxClassifier().fit(X, ["a"] * len(X))
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        SoftmaxClassifier().predict(X)


def _noisy(seed):
    """Overlapping classes in 40-d: how much to regularise matters, and train != val."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 300)
    X = rng.normal(size=(300, 40)) + 0.6 * np.eye(3, 40)[y] * rng.normal(1, 1, (300, 1))
    return X.astype(np.float32), np.array(["a", "b", "c"])[y]


@pytest.mark.parametrize("normalize", ["standard", "l2"])
def test_svm_c_is_chosen_on_the_validation_part_through_the_whole_pipeline(normalize):
    X, y = _noisy(seed=5)
    (X_tr, y_tr), (X_va, y_va) = (X[:120], y[:120]), (X[120:], y[120:])
    options = HeadOptions(normalize=normalize, pca=20)
    grid = HEADS["svm"].grid_for(HeadOptions())
    # What the choice must be: each C's pipeline fitted on train alone, scored on val.
    expected = {C: clone(make_head("svm", options)).set_params(head__C=C).fit(X_tr, y_tr)
                .score(X_va, y_va) for C in grid["C"]}
    assert len(set(expected.values())) > 1  # the choice matters on this data
    pipeline = make_head("svm", options)
    tuning = fit_head(pipeline, X_tr, y_tr, X_va, y_va, grid=grid)
    best = max(grid["C"], key=lambda C: (expected[C], -grid["C"].index(C)))
    assert tuning.chosen == {"C": best} and pipeline[-1].C == best
    assert {s["C"]: v for s, v in tuning.scores} == pytest.approx(expected)
    # Refitted on the training part only, not on train + val.
    reference = clone(make_head("svm", options)).set_params(head__C=best).fit(X_tr, y_tr)
    assert np.allclose(pipeline[-1].coef_, reference[-1].coef_)
    assert pipeline["normalize"].__class__ is reference["normalize"].__class__


def test_without_validation_data_the_grid_uses_cross_validation():
    X, y = _noisy(seed=6)
    pipeline = make_head("svm")
    tuning = fit_head(pipeline, X, y, grid=HEADS["svm"].grid_for(HeadOptions()))
    assert tuning.chosen["C"] in HEADS["svm"].grid_for(HeadOptions())["C"] and len(tuning.scores) == 4


def test_unknown_and_duplicate_heads():
    with pytest.raises(ValueError, match="unknown head 'nope'.*softmax"):
        resolve_heads("svm,nope")
    assert resolve_heads("all") == list(HEADS)
    with pytest.raises(ValueError, match="already registered"):
        register_head("svm")(lambda o: None)
    with pytest.raises(ValueError, match="unknown normalization"):
        HeadOptions(normalize="zscore")
