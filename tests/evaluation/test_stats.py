import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from featbank.evaluation.stats import (
    accuracy_ci,
    average_precision,
    map_ci,
    mcnemar_p,
    pack_hits,
    paired_map_p,
    resample_counts,
    unpack_hits,
)


def test_resample_counts_draw_n_rows_with_replacement():
    counts = resample_counts(50, 30, np.random.default_rng(0))
    assert counts.shape == (30, 50) and (counts.sum(axis=1) == 50).all()
    assert (counts == 0).mean() == pytest.approx(np.exp(-1), abs=0.05)  # ~37 % left out


def test_accuracy_interval_is_seeded_contains_the_mean_and_matches_the_normal_width():
    hits = np.r_[np.ones(900), np.zeros(100)]
    low, high = accuracy_ci(hits)
    assert low < 0.9 < high and accuracy_ci(hits) == [low, high]
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(0.9 * 0.1 / 1000), rel=0.15)
    assert accuracy_ci(np.ones(10)) == [1.0, 1.0]  # no spread to resample


def test_average_precision_equals_scikit_learn_ties_included():
    rng = np.random.default_rng(1)
    Y = (rng.random((80, 5)) < 0.25).astype(int)
    Y[0] = 1
    scores = np.round(Y + rng.normal(0, 1, Y.shape), 1)  # rounded: many ties
    ours = average_precision(Y, scores)[0]
    theirs = average_precision_score(Y, scores, average=None)
    assert np.allclose(ours, theirs)
    counts = np.ones((1, 80))
    counts[0, :40] = 2  # weighting a row twice = listing it twice
    doubled = average_precision(np.r_[Y, Y[:40]], np.r_[scores, scores[:40]])
    assert np.allclose(average_precision(Y, scores, counts), doubled)


def test_map_interval_brackets_the_estimate():
    rng = np.random.default_rng(2)
    Y = (rng.random((200, 6)) < 0.3).astype(int)
    scores = Y + rng.normal(0, 1, Y.shape)
    low, high = map_ci(Y, scores, resamples=1000)
    mean_ap = average_precision_score(Y, scores, average="macro")
    assert low < mean_ap < high and 0.02 < high - low < 0.3


def test_mcnemar_known_answers():
    a = np.array([1] * 10 + [0] * 0 + [1] * 50, dtype=bool)
    b = np.array([0] * 10 + [1] * 50, dtype=bool)
    assert mcnemar_p(a, b) == pytest.approx(2 * 0.5 ** 10)  # 10 discordant, all one way
    assert mcnemar_p(a, a) == 1.0
    c = b.copy()
    c[:5] = True  # 5 vs 0 discordant: p = 2 / 32
    assert mcnemar_p(a, c) == pytest.approx(0.0625)


def test_paired_map_test_sees_a_consistent_difference_that_the_intervals_overlap_on():
    rng = np.random.default_rng(4)
    Y = (rng.random((400, 6)) < 0.3).astype(int)
    a = Y + rng.normal(0, 1, Y.shape)
    b = a.copy()
    positives = np.argwhere(Y == 1)
    worse = positives[rng.random(len(positives)) < 0.2]
    b[worse[:, 0], worse[:, 1]] -= 0.5  # b ranks a fifth of the positives lower than a does
    assert map_ci(Y, b)[1] > map_ci(Y, a)[0]  # the unpaired intervals overlap
    assert paired_map_p(Y, a, b) < 0.01 and paired_map_p(Y, b, a) == paired_map_p(Y, a, b)
    assert paired_map_p(Y, a, a) == 1.0


def test_paired_map_test_rejects_equal_rankers_about_5_percent_of_the_time():
    rng = np.random.default_rng(5)
    p = []
    for _ in range(100):
        Y = (rng.random((150, 5)) < 0.3).astype(int)
        p.append(paired_map_p(Y, Y + rng.normal(0, 1, Y.shape), Y + rng.normal(0, 1, Y.shape),
                              resamples=500))
    assert 1 <= np.sum(np.array(p) < 0.05) <= 12  # binomial(100, 0.05): 5 +- 2.2


def test_hits_pack_and_unpack():
    hits = np.random.default_rng(3).random(1001) < 0.5
    assert (unpack_hits(pack_hits(hits), 1001) == hits).all()
