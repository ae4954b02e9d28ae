import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.svm import LinearSVC

from featbank.heads import engines
from featbank.heads.linear import TorchLinear, loss_value
from featbank.heads.logreg import LogisticHead
from featbank.heads.svm import LinearSVM


def _overlapping(n=600, d=20, k=4, seed=0, separation=3.6):
    """Gaussian classes that overlap: the penalty matters and nothing is separable."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = rng.normal(size=(n, d)) + separation * rng.normal(size=(k, d))[y] / np.sqrt(d)
    return X.astype(np.float32), np.array(["a", "b", "c", "d"])[y]


def test_losses_known_answers():
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.3, -2.0]])
    y = torch.tensor([0, 2])
    assert loss_value("multinomial", scores, y).item() == pytest.approx(
        torch.nn.functional.cross_entropy(scores, y).item())
    sig = torch.sigmoid(scores)
    by_hand = -(torch.log(sig[0, 0]) + torch.log(1 - sig[0, 1]) + torch.log(1 - sig[0, 2])
                + torch.log(1 - sig[1, 0]) + torch.log(1 - sig[1, 1]) + torch.log(sig[1, 2])) / 2
    assert loss_value("logistic", scores, y).item() == pytest.approx(by_hand.item(), rel=1e-5)
    # margins t * s: row 0: 2, 1, -0.5 -> (0, 0, 1.5^2); row 1: 0, -0.3, -2 -> (1, 1.3^2, 3^2)
    hinge = (1.5 ** 2 + 1 + 1.3 ** 2 + 3 ** 2) / 2
    assert loss_value("squared_hinge", scores, y).item() == pytest.approx(hinge, rel=1e-5)
    weights = torch.tensor([1.0, 1.0, 3.0])  # weighted mean, like cross_entropy's
    per = torch.tensor([2.25, 1 + 1.69 + 9.0])
    assert loss_value("squared_hinge", scores, y, weights).item() == pytest.approx(
        ((per[0] + 3 * per[1]) / 4).item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        loss_value("hinge", scores, y)


@pytest.mark.parametrize("loss, reference", [
    ("multinomial", lambda C: LogisticRegression(C=C, max_iter=5000)),
    ("squared_hinge", lambda C: LinearSVC(C=C, max_iter=20000))])
def test_torch_engine_minimises_the_scikit_learn_objective(loss, reference):
    """alpha = 1 / (C n): the torch solution predicts what scikit-learn's exact solver does."""
    X, y = _overlapping()
    X_tr, y_tr, X_va, y_va = X[:450], y[:450], X[450:], y[450:]
    C = 0.05
    ours = TorchLinear(loss=loss, alpha=1 / (C * len(X_tr)), patience=20,
                       max_epochs=300).fit(X_tr, y_tr, X_va, y_va)
    theirs = reference(C).fit(X_tr, y_tr)
    assert np.mean(ours.predict(X) == theirs.predict(X)) >= 0.97
    norms = np.linalg.norm(ours.coef_), np.linalg.norm(theirs.coef_)
    assert norms[0] == pytest.approx(norms[1], rel=0.15)
    strong = TorchLinear(loss=loss, alpha=10 / (C * len(X_tr)), patience=20,
                         max_epochs=300).fit(X_tr, y_tr, X_va, y_va)
    assert np.linalg.norm(strong.coef_) < 0.7 * norms[0]  # the penalty is really applied


@pytest.mark.parametrize("n, batch_size, steps_tried", [(300, None, 11), (2000, 16, 16)])
def test_a_penalty_that_hurts_costs_one_window_of_at_least_8_steps(n, batch_size, steps_tried):
    X, y = _overlapping(d=20, seed=2, separation=1.5, n=n + 300)
    X_tr, y_tr, X_va, y_va = X[:n], y[:n], X[n:], y[n:]
    plain = TorchLinear(batch_size=batch_size).fit(X_tr, y_tr, X_va, y_va)
    tuned = TorchLinear(batch_size=batch_size)
    tuned.fit_path(X_tr, y_tr, X_va, y_va, "alpha", [0.0, 100.0])  # 100: the loss rises
    # 300 images: 30 steps an epoch, checks every 3-4 steps, 3 checks (11 steps) make
    # the window; 2000 images in batches of 16: 125 steps, one check (16 steps) does.
    steps = -(-n // (batch_size or -(-n // 32)))
    assert tuned.n_epochs_ == pytest.approx(plain.n_epochs_ + steps_tried / steps, abs=1e-3)


def test_path_starts_with_the_untuned_fit_and_keeps_the_best_on_validation():
    X, y = _overlapping(d=60, seed=1, separation=1.5)
    X_tr, y_tr, X_va, y_va = X[:300], y[:300], X[300:450], y[300:450]
    plain = TorchLinear(alpha=0.0).fit(X_tr, y_tr, X_va, y_va)
    tuned = TorchLinear()
    alphas = [0.0, 1e-3, 1e-2, 1e-1, 1.0]
    scores = tuned.fit_path(X_tr, y_tr, X_va, y_va, "alpha", alphas)
    assert [a for a, _ in scores] == alphas[:len(scores)] and len(scores) >= 2
    if len(scores) < len(alphas):  # stopped: the last two tried are below the best
        assert max(s for _, s in scores[-2:]) < max(s for _, s in scores)
    assert scores[0][1] == pytest.approx(plain.score(X_va, y_va))
    best = max(scores, key=lambda s: s[1])
    assert tuned.alpha == best[0] and tuned.score(X_va, y_va) == pytest.approx(best[1])
    assert len({round(s, 6) for _, s in scores}) > 1  # the values were really tried
    assert tuned.history_ and all(h["alpha"] == tuned.alpha for h in tuned.history_)
    assert tuned.n_epochs_ > plain.n_epochs_  # the later points trained too
    with pytest.raises(ValueError, match="tunes alpha, not 'C'"):
        TorchLinear().fit_path(X_tr, y_tr, X_va, y_va, "C", [1.0])


def test_validation_classes_unseen_in_training_count_as_errors():
    X, y = _overlapping(seed=2)
    y_va = y[300:].copy()
    y_va[:30] = "never-trained"
    head = TorchLinear()
    [(_, accuracy)] = head.fit_path(X[:300], y[:300], X[300:], y_va, "alpha", [0.0])
    assert accuracy == pytest.approx(head.score(X[300:], y_va))


@pytest.mark.parametrize("head", [LogisticHead, LinearSVM])
def test_engine_switch_picks_torch_above_the_threshold(monkeypatch, head):
    X, y = _overlapping(seed=3)
    X_tr, y_tr, X_va, y_va = X[:400], y[:400], X[400:500], y[400:500]
    small = head().fit(X_tr, y_tr, X_va, y_va)
    assert small.engine_ == "sklearn"
    monkeypatch.setattr(engines, "TORCH_ABOVE", 100)
    large = head().fit(X_tr, y_tr, X_va, y_va)
    assert large.engine_ == "torch" and isinstance(large.estimator_, TorchLinear)
    assert large.estimator_.alpha == pytest.approx(1 / (1.0 * len(X_tr)))
    assert np.mean(large.predict(X[500:]) == small.predict(X[500:])) >= 0.9
    scores = large.fit_path(X_tr, y_tr, X_va, y_va, "C", [1.0, 0.01])
    assert [c for c, _ in scores] == [1.0, 0.01] and large.C in (1.0, 0.01)
    assert large.score(X_va, y_va) == pytest.approx(dict(scores)[large.C])
    # still a scikit-learn estimator: clone and GridSearchCV work, with either engine
    search = GridSearchCV(head(engine="torch"), {"C": [0.1, 1.0]}, cv=2).fit(X_tr, y_tr)
    assert search.best_estimator_.engine_ == "torch"
    assert clone(large).get_params() == large.get_params()
    with pytest.raises(ValueError, match="engine must be"):
        head(engine="gpu").fit(X_tr, y_tr)


def test_probabilities_only_where_the_loss_has_them():
    X, y = _overlapping(seed=4)
    for loss in ("multinomial", "logistic"):
        p = TorchLinear(loss=loss).fit(X[:400], y[:400]).predict_proba(X[400:])
        assert p.shape == (200, 4) and np.allclose(p.sum(1), 1)
    assert not hasattr(TorchLinear(loss="squared_hinge"), "predict_proba")
    assert hasattr(LogisticHead(), "predict_proba") and not hasattr(LinearSVM(), "predict_proba")


def test_svm_keeps_a_stopping_window_of_an_epoch_at_scale():
    # 2000 images in batches of 16: the fast recipe's window is one check (half an
    # epoch); the squared hinge keeps two (an epoch), logistic the recipe's.
    X, y = _overlapping(n=2300, d=20, seed=3, separation=1.5)
    svm, logistic = LinearSVM(engine="torch")._torch(), LogisticHead(engine="torch")._torch()
    assert (svm.patience, logistic.patience) == (2, None)
    for head in (svm, logistic):
        head.set_params(batch_size=16).fit(X[:2000], y[:2000], X[2000:], y[2000:])
        losses = [h["val_loss"] for h in head.history_]
        window = head.patience or 1
        stalled = [min(losses[k - window:k]) >= min(losses[:k - window]) * 0.98
                   for k in range(window + 1, len(losses) + 1)]
        assert stalled[-1] and not any(stalled[:-1])
