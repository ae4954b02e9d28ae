"""analyze.py layer-curve: a stored score ± interval per layer, a line per network and head."""
import json

import pytest
from helpers import write_layered_cache, write_toy_cache
from PIL import Image

import featbank as fb
from featbank.core.errors import MissingFile


def test_the_curve_has_a_point_per_layer_in_forward_order_and_a_plot(tmp_path):
    write_layered_cache(tmp_path)
    fb.classify(head="logreg,knn", task="style", layers="all", cache=tmp_path, jobs=1)
    [report] = fb.layer_curve(cache=tmp_path)
    assert report["task"] == "style" and report["metric"] == "top-1"
    lines = {line["head"]: line for line in report["lines"]}
    assert set(lines) == {"logreg", "knn"}
    points = lines["logreg"]["points"]
    assert [p["name"] for p in points] == ["layer1", "layer3", "final"]
    assert [p["x"] for p in points] == [2, 3, 4] and points[-1]["depth"] == 1.0
    assert all(p["spread"] is not None for p in points) and points[0]["spread"] > 0
    assert points[0]["score"] < points[-1]["score"]
    stored = {r["layer"]: r["top1"] for r in map(json.loads,
              (tmp_path / "toy" / "results.jsonl").read_text().splitlines())
              if r["head"] == "logreg"}
    assert [p["score"] for p in points] == [stored["layer1"], stored["layer3"], stored["final"]]
    with Image.open(report["plot"]) as image:
        assert image.width > 400 and image.height > 300
    assert json.loads(open(report["json"]).read())["lines"][0]["points"]
    assert [len(r["lines"]) for r in fb.layer_curve(cache=tmp_path, head="knn")] == [1]


def test_without_several_layers_there_is_nothing_to_draw(tmp_path):
    write_toy_cache(tmp_path)
    fb.classify(head="logreg", task="style", cache=tmp_path, jobs=1)
    with pytest.raises(MissingFile, match="extract.py --layers all"):
        fb.layer_curve(cache=tmp_path)
