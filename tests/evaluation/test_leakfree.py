"""The top-1 without the leaked test images comes from the stored per-image hits."""
import numpy as np
import pytest

from featbank.data.tasks import ids_digest
from featbank.evaluation.leakfree import without_leaks
from featbank.evaluation.stats import pack_hits


def _row(ids, hits, **extra):
    order = np.argsort(ids)
    return {"backbone": "b", "weights": "imagenet", "method": "off-the-shelf", "head": "logreg",
            "top1": float(np.mean(hits)), "test_ids_sha256": ids_digest(ids),
            "test_correct": pack_hits(np.asarray(hits, bool)[order]), **extra}


def test_the_leaked_images_are_left_out_of_the_stored_hits():
    ids = [f"{k:02d}.jpg" for k in range(10)]
    hits = [1, 1, 1, 1, 0, 0, 1, 1, 1, 0]  # the leaked 00-03 are all right
    [row] = without_leaks([_row(ids, hits)], ids, {"00.jpg", "01.jpg", "02.jpg", "03.jpg"})
    assert row["top1"] == pytest.approx(0.7)
    assert row["top1_without_leaks"] == pytest.approx(3 / 6)
    assert row["n_left_out"] == 4 and row["n_test"] == 10
    low, high = row["ci_without_leaks"]
    assert low < 0.5 < high


def test_a_row_tested_on_other_images_is_left_out():
    ids = [f"{k:02d}.jpg" for k in range(10)]
    other = _row(ids[:9], [1] * 9)  # e.g. a θ̂ row that left out an image
    assert without_leaks([other], ids, {"00.jpg"}) == []
