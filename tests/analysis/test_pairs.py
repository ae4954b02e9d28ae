"""Near-duplicate pairs: the turn of a rotated copy is reported from the first image's
side, and on real photographs rotated copies are found at the default threshold while
distinct photographs are not paired."""
import csv
import shutil

import numpy as np
import pytest
from helpers import HERITAGE, SQUEEZENET, needs_heritage, needs_squeezenet
from PIL import Image

import featbank as fb
from featbank.analysis.pairs import PairSettings, candidate_pairs
from featbank.store.features import one_feature_file
from featbank.store.index import ensure_index
from featbank.store.provenance import feature_path
from featbank.store.writer import FeatureWriter

ATTRS = {"backbone": "squeezenet1_1", "feature_dim": 8, "weights": "random",
         "weights_exact": "random:library-init:seed0", "dtype": "float32"}


def test_a_turned_query_pairs_rows_and_says_the_turn_from_the_smaller_row(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 8)).astype(np.float32)
    path = feature_path(tmp_path, "c", "squeezenet1_1", "random")
    out = FeatureWriter(path, {**ATTRS, "collection": "c"})
    out.add_batch([f"{k}.jpg" for k in range(20)], X)
    out.merge()
    entry = one_feature_file(tmp_path / "c", "squeezenet1_1", "all", warn=lambda *_: None)
    index, _ = ensure_index(entry.path, warn=lambda *_: None)
    turned = rng.normal(size=(3, 20, 8)).astype(np.float32)
    turned[0, 3] = X[7]  # row 3 turned by 90 looks like row 7: 7 is 3 turned by 90
    turned[2, 12] = X[5]  # row 12 turned by 270 looks like row 5: 12 is 5 turned by 90
    pairs = candidate_pairs(index, entry, PairSettings(threshold=0.999, k=5), turned=turned)
    found = {(int(a), int(b)): int(r) for a, b, r in zip(pairs.a, pairs.b, pairs.rotation)}
    assert found == {(3, 7): 90, (5, 12): 90}
    assert candidate_pairs(index, entry, PairSettings(threshold=0.999, k=5)).a.size == 0


def _rotated_collection(root, n_rotated=30, n_others=300):
    """``n_others`` heritage photographs, and copies of ``n_rotated`` of them turned by 90,
    180 or 270 degrees; copy id -> its original's id."""
    photographs = sorted((HERITAGE / "test").glob("*/*.jpg"))
    chosen = photographs[::len(photographs) // n_others][:n_others]
    root = root / "all"  # one class folder
    root.mkdir(parents=True)
    truth = {}
    for k, path in enumerate(chosen):
        shutil.copy(path, root / f"{k:04d}.jpg")
    turns = [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270]
    for k in range(n_rotated):
        original = k * (n_others // n_rotated)
        with Image.open(root / f"{original:04d}.jpg") as im:
            im.transpose(turns[k % 3]).save(root / f"turned{k:02d}.jpg", quality=90)
        truth[f"all/turned{k:02d}.jpg"] = f"all/{original:04d}.jpg"
    return truth


@pytest.mark.slow
@needs_heritage
@needs_squeezenet
def test_rotated_copies_among_others_are_found_at_the_default_threshold(tmp_path):
    truth = _rotated_collection(tmp_path / "images")
    cache = tmp_path / "cache"
    fb.extract(tmp_path / "images", backbone="squeezenet1_1", weights=str(SQUEEZENET),
               collection="turned", cache=cache, progress=False)
    report = fb.duplicates("squeezenet1_1", collection="turned", cache=cache, progress=False)
    with open(report["pairs_csv"], newline="") as fh:
        confirmed = [r for r in csv.DictReader(fh) if r["confirmed"] == "1"]
    pairs = {frozenset((r["id_a"], r["id_b"])) for r in confirmed}
    planted = {frozenset(p) for p in truth.items()}
    recall = len(pairs & planted) / len(planted)
    precision = len(pairs & planted) / max(1, len(pairs))
    assert recall >= 0.9 and precision >= 0.9, (recall, precision, pairs - planted)
    for r in confirmed:  # the turn is reported (the copies were turned counter-clockwise)
        if frozenset((r["id_a"], r["id_b"])) in planted:
            assert int(r["rotation"]) in (90, 180, 270)
    assert report["n_rotated"] >= 0.9 * len(planted)
