"""CKA, precision@k and AP@k against independent reference computations."""
import numpy as np
import pytest

from featbank.analysis.similarity import (
    average_precision_at_k,
    cka_matrix,
    linear_cka,
    precision_at_k,
)


def _gram_cka(x, y, debiased):
    """Reference: CKA from n x n Gram matrices (Kornblith et al.), the unbiased HSIC
    of Song et al. (2012) written out term by term."""
    def hsic(k, l):
        n = len(k)
        if not debiased:
            h = np.eye(n) - 1.0 / n
            return np.trace(h @ k @ h @ l)
        k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
        one = np.ones(n)
        return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))
    x = x - x.mean(0)
    y = y - y.mean(0)
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_the_gram_matrix_definition(debiased):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 7))
    y = x @ rng.normal(size=(7, 5)) + rng.normal(size=(40, 5))
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(_gram_cka(x, y, debiased), rel=1e-9)


def test_cka_is_one_for_the_same_representation_up_to_rotation_and_scale():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0, abs=1e-6)
    unrelated = rng.normal(size=(200, 16))
    assert linear_cka(x, unrelated) < 0.2
    # the debiased estimator removes most of the small-sample bias towards similarity
    assert abs(linear_cka(x, unrelated, debiased=True)) < linear_cka(x, unrelated)


def test_cka_matrix_and_bad_inputs():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 6))
    m = cka_matrix([a, b, a])
    assert np.allclose(np.diag(m), 1) and np.allclose(m, m.T)
    assert m[0, 2] == pytest.approx(1.0) and m[0, 1] == pytest.approx(linear_cka(a, b))
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(a, b[:10])
    with pytest.raises(ValueError, match="constant"):
        linear_cka(a, np.ones((30, 3)))


def test_precision_and_average_precision_at_k_by_hand():
    relevant = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)
    assert precision_at_k(relevant).tolist() == [0.5, 0.0, 1.0]
    # query 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / min(4, R=2)
    # query 1: no hits -> 0 ; query 2: all hits, R=10 -> (1+1+1+1) / 4
    ap = average_precision_at_k(relevant, np.array([2, 5, 10]))
    assert ap == pytest.approx([(1 + 2 / 3) / 2, 0.0, 1.0])
    assert average_precision_at_k(relevant[:1], np.array([0])).tolist() == [0.0]


def test_the_docstring_examples_run():
    import doctest

    import featbank.analysis.similarity as module

    result = doctest.testmod(module)
    assert result.attempted >= 3 and result.failed == 0
