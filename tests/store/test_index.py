"""The similarity index beside a feature file: exact below the threshold, approximate above
it with a recall we can state, grown without a rebuild, rebuilt when stale, and whole or
absent after a kill."""
import numpy as np
import pytest

import featbank.store.index as index_module
from featbank.store.index import ensure_index, index_path, read_info, search
from featbank.store.writer import FeatureWriter

ATTRS = {"backbone": "toy", "feature_dim": 16, "weights": "random", "input_size": 8,
         "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash", "crop_pct": 1.0,
         "interpolation": "bilinear", "dtype": "float32", "collection": "c"}


def _clustered(n, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(2, n // 50), dim))
    return (centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, dim))
            ).astype(np.float32)


def _file(path, X, first=0, attrs=ATTRS):
    out = FeatureWriter(path, {**attrs, "feature_dim": X.shape[1]})
    out.add_batch([f"img/{k}.jpg" for k in range(first, first + len(X))], X)
    out.merge()
    return path


def _exact(X, Q, k):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    return np.argsort(-(Qn @ Xn.T), axis=1)[:, :k]


def test_below_the_threshold_the_index_is_exact_and_kept_beside_the_file(tmp_path):
    X = _clustered(500)
    path = _file(tmp_path / "f.h5", X)
    index, info = ensure_index(path, warn=lambda m: None)
    assert info.kind == "flat" and info.rows == 500 and index_path(path).is_file()
    found, similarity = search(index, X[:20], 5)
    assert np.array_equal(found, _exact(X, X[:20], 5))
    assert np.allclose(similarity[:, 0], 1.0, atol=1e-5)
    gallery = np.arange(250, 500)  # a restricted search keeps to the rows given
    found, _ = search(index, X[:5], 3, rows=gallery)
    assert found.min() >= 250


def test_new_rows_are_added_without_a_rebuild_and_a_changed_file_is_rebuilt(tmp_path,
                                                                          monkeypatch):
    X = _clustered(400)
    path = _file(tmp_path / "f.h5", X[:300])
    ensure_index(path, warn=lambda m: None)
    _file(path, X[300:], first=300)  # the feature file grows
    monkeypatch.setattr(index_module, "_build", lambda *a: pytest.fail("rebuilt"))
    index, info = ensure_index(path, warn=lambda m: None)
    assert index.ntotal == info.rows == 400
    assert np.array_equal(search(index, X[390:], 1)[0].ravel(), np.arange(390, 400))
    monkeypatch.undo()
    path.unlink()  # the rows change (another run rebuilt the file): the index is stale
    for shards in tmp_path.glob("*.shards"):
        for shard in shards.iterdir():
            shard.unlink()
    _file(path, X[::-1][:100])
    index, info = ensure_index(path, warn=lambda m: None)
    assert index.ntotal == info.rows == 100


def test_above_the_threshold_an_approximate_index_keeps_its_recall(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "EXACT_BELOW", 1000)
    X = _clustered(20_000, dim=32)
    path = _file(tmp_path / "f.h5", X, attrs={**ATTRS, "feature_dim": 32})
    index, info = ensure_index(path, warn=lambda m: None)
    assert info.kind == "ivf-sq8" and info.factory.startswith("IVF") and info.nprobe >= 16
    queries = X[::200]
    found, _ = search(index, queries, 10)
    exact = _exact(X, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.9, recall
    reopened, again = ensure_index(path, warn=lambda m: None)  # read back, nprobe restored
    assert again == info and np.array_equal(search(reopened, queries, 10)[0], found)


def test_a_build_killed_midway_leaves_no_index_and_the_next_run_builds_one(tmp_path,
                                                                         monkeypatch):
    path = _file(tmp_path / "f.h5", _clustered(200))

    def killed(index, where):
        with open(where, "wb") as fh:
            fh.write(b"half an index")
        raise KeyboardInterrupt
    faiss = index_module.faiss()
    monkeypatch.setattr(faiss, "write_index", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_index(path, warn=lambda m: None)
    assert not index_path(path).exists() and read_info(path) is None
    monkeypatch.undo()
    index, info = ensure_index(path, warn=lambda m: None)
    assert index.ntotal == 200 and read_info(path) == info


def test_a_file_started_anew_with_the_same_ids_gets_a_new_index(tmp_path):
    """--force-new sets the file aside but not its index: the ids are the same, the vectors
    are not, and the index must answer from the new ones."""
    X = _clustered(300)
    path = _file(tmp_path / "f.h5", X)
    ensure_index(path, warn=lambda m: None)
    FeatureWriter(path, {**ATTRS, "feature_dim": 16}).set_aside()
    Y = _clustered(300, seed=7)
    _file(path, Y)
    index, info = ensure_index(path, warn=lambda m: None)
    assert np.array_equal(search(index, Y[:10], 1)[0].ravel(), np.arange(10))
    np.testing.assert_allclose(search(index, Y[:10], 1)[1].ravel(), 1.0, atol=1e-5)


def test_a_file_grown_past_exact_search_gets_an_approximate_index(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "EXACT_BELOW", 1000)
    X = _clustered(1600)
    path = _file(tmp_path / "f.h5", X[:800])
    assert ensure_index(path, warn=lambda m: None)[1].kind == "flat"
    _file(path, X[800:], first=800)
    index, info = ensure_index(path, warn=lambda m: None)
    assert info.kind == "ivf-sq8" and info.rows == index.ntotal == 1600
