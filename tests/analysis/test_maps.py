"""2-D maps: stratified samples, t-SNE without umap-learn, PNG, CSV and hover page."""
import csv
import json

import numpy as np
import pytest
from helpers import browser_page, needs_browser, write_toy_cache

from featbank.analysis.config import MapConfig
from featbank.analysis.maps import sample_rows
from featbank.data.collection import load_metadata


def test_sample_rows_keeps_each_class_share():
    labels = np.array(["a"] * 900 + ["b"] * 90 + ["c"] * 10)
    rows = sample_rows(labels, 100, seed=0)
    assert len(rows) == 100 and len(set(rows)) == 100 and np.all(np.diff(rows) > 0)
    counts = {c: int((labels[rows] == c).sum()) for c in "abc"}
    assert counts["a"] >= 88 and counts["b"] >= 8 and counts["c"] >= 1
    assert np.array_equal(sample_rows(labels, 100, seed=0), rows)  # seeded
    assert len(sample_rows(labels, 5000, seed=0)) == 1000


def test_map_writes_png_csv_and_hover_page(tmp_path):
    from featbank.analysis.maps import make_map

    cache = tmp_path / "cache"
    write_toy_cache(cache)
    collection = load_metadata(cache / "toy")
    report = make_map(collection, MapConfig(backbone="resnet18", task="style", method="tsne",
                                            cache_root=str(cache), progress=False),
                      warn=lambda m: None)
    assert report["method"] == "tsne" and report["n_points"] == 60
    assert report["silhouette_2d"] > 0.5  # three well-separated classes stay apart
    with open(report["points_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60 and set(rows[0]) == {"id", "x", "y", "style", "single", "tiny"}
    page = open(report["html"]).read()
    assert page.count("<circle") == 60 and "const POINTS" in page and "mouseenter" in page
    assert open(report["png"], "rb").read(4) == b"\x89PNG"
    assert json.loads(open(report["json"]).read())["settings"]["task"] == "style"


def test_map_options_are_checked():
    with pytest.raises(ValueError, match="--method"):
        MapConfig(backbone="resnet18", task="style", method="pca")
    with pytest.raises(ValueError, match="--max-points"):
        MapConfig(backbone="resnet18", task="style", max_points=2)


@needs_browser
def test_hovering_a_point_shows_its_image_and_labels_in_a_browser(tmp_path):
    from featbank.analysis.maps import make_map

    cache = tmp_path / "cache"
    write_toy_cache(cache)
    report = make_map(load_metadata(cache / "toy"),
                      MapConfig(backbone="resnet18", task="style", method="tsne",
                                cache_root=str(cache), progress=False), warn=lambda m: None)
    with browser_page() as page:
        page.goto(f"file://{report['html']}")
        assert not page.is_visible("#tip")
        page.hover("circle[data-k='7']")
        tip = page.text_content("#tip")
        assert page.is_visible("#tip") and "7.jpg" in tip and "style: baroque" in tip
        assert page.eval_on_selector("#tip img", "i => i.naturalWidth") > 0
        page.mouse.move(0, 0)
        assert not page.is_visible("#tip")
