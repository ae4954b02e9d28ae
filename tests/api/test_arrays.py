"""The array API: CKA, neighbours and near-duplicates on arrays or Features, DataFrames out,
nothing written; its docstring examples run."""
import doctest

import numpy as np
import pytest
from helpers import write_toy_cache

import featbank as fb
import featbank.api.arrays as arrays


def test_the_docstring_examples_run():
    result = doctest.testmod(arrays)
    assert result.attempted >= 8 and result.failed == 0


def test_cka_on_arrays_is_one_for_the_same_and_small_for_independent_ones():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 32))
    assert fb.cka(X, X) == pytest.approx(1.0)
    assert fb.cka(X, rng.normal(size=(300, 32))) < 0.15
    with pytest.raises(ValueError, match="same samples"):
        fb.cka(X, X[:10])


def test_features_are_compared_on_the_ids_they_share(tmp_path):
    write_toy_cache(tmp_path)
    a = fb.load_features("resnet18", collection="toy", cache=tmp_path)
    b = fb.load_features("alexnet", collection="toy", cache=tmp_path)
    shuffled = type(b)(ids=b.ids[::-1], X=b.X[::-1], provenance=b.provenance, skipped={})
    assert fb.cka(a, b) == pytest.approx(fb.cka(a, shuffled))
    frame = fb.cka_matrix({"resnet18": a, "alexnet": b})
    assert frame.loc["resnet18", "alexnet"] == pytest.approx(fb.cka(a.X, b.X))


def test_neighbours_are_the_exact_cosine_ones():
    rng = np.random.default_rng(3)
    gallery, queries = rng.normal(size=(300, 12)), rng.normal(size=(25, 12))
    found = fb.neighbours(gallery, queries, k=7)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    reference = np.argsort(-(q @ g.T), axis=1)[:, :7]
    assert found["neighbour"].to_numpy().reshape(25, 7).tolist() == reference.tolist()
    assert list(found.columns) == ["query", "rank", "neighbour", "similarity"]
    with pytest.raises(ValueError, match="gallery holds 300"):
        fb.neighbours(gallery, queries, k=301)


def test_near_duplicates_group_planted_copies(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 16))
    X = np.vstack([X, X[[3, 3, 9]] + 0.001 * rng.normal(size=(3, 16))])
    groups = fb.near_duplicates(X, threshold=0.99)
    assert sorted(groups.groupby("group")["id"].apply(list).tolist()) == [[3, 40, 41], [9, 42]]
    assert (groups["similarity_to_first"] > 0.99).all()
