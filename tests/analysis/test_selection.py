"""Outliers come first by their distance to their neighbours; k-center greedy covers every
cluster before a second pick in any, and starts from what is already labelled."""
import numpy as np
import pytest

import featbank as fb
from featbank.analysis.selection import k_center_greedy
from featbank.data.collection import Collection, save_metadata
from featbank.store.provenance import feature_path
from featbank.store.writer import FeatureWriter

ATTRS = {"backbone": "squeezenet1_1", "feature_dim": 16, "weights": "random",
         "weights_exact": "random:library-init:seed0", "dtype": "float32"}


def _clusters(seed=0, n_clusters=5, per=20):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, 16)) * 5
    X = np.vstack([c + 0.1 * rng.normal(size=(per, 16)) for c in centres])
    return X.astype(np.float32), np.repeat(np.arange(n_clusters), per)


def test_k_center_greedy_picks_one_image_of_every_cluster_first():
    X, cluster = _clusters()
    picks, radius = k_center_greedy(X, 5)
    assert sorted(cluster[picks]) == [0, 1, 2, 3, 4]
    assert radius == sorted(radius, reverse=True)  # the covering radius only shrinks
    labelled = [0, 20, 40]  # one image of each of clusters 0, 1 and 2 already labelled
    picks, _ = k_center_greedy(X, 2, start=labelled)
    assert sorted(cluster[picks]) == [3, 4]


@pytest.fixture
def cache(tmp_path):
    X, _ = _clusters(per=10)
    far = np.random.default_rng(9).normal(size=(2, 16)).astype(np.float32) * 5
    X = np.vstack([X, far])
    ids = [f"{k}.jpg" for k in range(len(X))]
    save_metadata(Collection(name="c", root=tmp_path, ids=ids, labels={"label": ["a"] * len(ids)}),
                  tmp_path / "cache" / "c")
    out = FeatureWriter(feature_path(tmp_path / "cache", "c", "squeezenet1_1", "random"),
                        {**ATTRS, "collection": "c"})
    out.add_batch(ids, X)
    out.merge()
    return tmp_path / "cache"


def test_outliers_rank_the_stray_images_first_and_select_writes_its_picks(cache, tmp_path):
    frame = fb.outliers("squeezenet1_1", collection="c", cache=cache, k=5, sheet=0)
    assert set(frame["id"][:2]) == {"50.jpg", "51.jpg"}
    assert frame["score"].is_monotonic_decreasing and len(frame) == 52
    (tmp_path / "done.txt").write_text("0.jpg\n10.jpg\nnot-there.jpg\n")
    notes = []
    picked = fb.select("squeezenet1_1", 5, collection="c", cache=cache, sheet=0,
                       labelled=tmp_path / "done.txt", warn=notes.append)
    assert len(picked) == 5 and not {"0.jpg", "10.jpg"} & set(picked["id"])
    assert any("not-there.jpg" in n for n in notes)
    assert picked.attrs["report"]["n_labelled"] == 2
