"""Near-duplicates: planted copies are grouped, the CSV lists them with their similarity,
the HTML pages through the groups in a real browser, and --across pairs two collections."""
import csv

import numpy as np
import pytest
from helpers import browser_page, make_image, needs_browser

import featbank as fb
from featbank.data.collection import Collection, save_metadata
from featbank.store.provenance import feature_path
from featbank.store.writer import FeatureWriter

ATTRS = {"backbone": "squeezenet1_1", "feature_dim": 16, "weights": "random",
         "weights_exact": "random:library-init:seed0", "input_size": 224,
         "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "squash",
         "crop_pct": 1.0, "interpolation": "bilinear", "dtype": "float32"}


def _collection(cache, name, X, images):
    ids = [f"a/{k}.jpg" for k in range(len(X))]
    for k, i in enumerate(ids):
        make_image(images / i, seed=k, size=(24, 24))
    collection = Collection(name=name, root=images, ids=ids, labels={"label": ["a"] * len(ids)})
    save_metadata(collection, cache / name)
    out = FeatureWriter(feature_path(cache, name, "squeezenet1_1", "random"),
                        {**ATTRS, "collection": name})
    out.add_batch(ids, X)
    out.merge()
    return ids


@pytest.fixture
def planted(tmp_path):
    """60 distinct vectors, then copies: rows 60-62 of row 0, 63 of row 5, 64 of row 9."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 16)).astype(np.float32)
    copies = np.stack([X[0] + 0.01 * rng.normal(size=16) for _ in range(3)]
                      + [X[5] * 1.1, X[9] + 0.02])
    _collection(tmp_path / "cache", "scans", np.vstack([X, copies]).astype(np.float32),
                tmp_path / "images")
    return tmp_path / "cache"


def test_planted_copies_are_grouped_and_listed(planted):
    report = fb.duplicates("squeezenet1_1", collection="scans", cache=planted, rotations=False, verify="off", threshold=0.98)
    assert report["n_groups"] == 3 and report["largest"] == [4, 2, 2]
    with open(report["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = [r for r in rows if r["group"] == "1"]
    assert [r["id"] for r in first] == ["a/0.jpg", "a/60.jpg", "a/61.jpg", "a/62.jpg"]
    assert float(first[0]["similarity_to_first"]) == pytest.approx(1.0)
    assert all(float(r["similarity_to_first"]) >= 0.98 for r in rows)
    # a stricter threshold drops the looser copy of row 9
    assert fb.duplicates("squeezenet1_1", collection="scans", cache=planted,
                         rotations=False, verify="off", threshold=0.9999)["n_groups"] < 3


def test_across_finds_which_new_scans_are_already_held(planted, tmp_path):
    rng = np.random.default_rng(2)
    held = fb.load_features("squeezenet1_1", collection="scans", cache=planted).X
    new = np.vstack([held[[3, 7]] + 0.005, rng.normal(size=(5, 16))]).astype(np.float32)
    _collection(planted, "campaign2", new, tmp_path / "images2")
    report = fb.duplicates("squeezenet1_1", collection="campaign2", across="scans",
                           cache=planted, rotations=False, verify="off", threshold=0.98)
    assert report["n_duplicated"] == 2
    with open(report["csv"], newline="") as fh:
        pairs = {(r["id"], r["id in scans"]) for r in csv.DictReader(fh)}
    assert {("a/0.jpg", "a/3.jpg"), ("a/1.jpg", "a/7.jpg")} <= pairs


@needs_browser
def test_the_html_page_pages_through_the_groups_in_a_browser(planted, monkeypatch):
    import featbank.analysis.duplicates as module

    monkeypatch.setattr(module, "PER_PAGE", 2)  # 3 groups: two pages
    report = fb.duplicates("squeezenet1_1", collection="scans", cache=planted, rotations=False, verify="off", threshold=0.98)
    with browser_page() as page:
        page.goto(f"file://{report['html']}")
        shown = lambda: [h.text_content() for h in page.query_selector_all(".group h2")  # noqa
                         if h.is_visible()]
        assert shown() == ["group 1 (4 images)", "group 2 (2 images)"]
        assert page.text_content("#where") == "page 1 of 2"
        page.click("#next")
        assert shown() == ["group 3 (2 images)"] and page.text_content("#where") == "page 2 of 2"
        images = page.query_selector_all(".group img")
        assert all(img.evaluate("i => i.naturalWidth") > 0 for img in images)  # thumbnails load
