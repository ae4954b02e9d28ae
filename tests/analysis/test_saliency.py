"""analyze.py saliency: linear heads as torch layers, VisualBackProp, Grad-CAM, IG, sanity."""
import json

import numpy as np
import pytest
import torch
from helpers import image_collection, tiny_run
from torch import nn

from featbank.analysis.config import SaliencyConfig
from featbank.analysis.networks import load_network
from featbank.analysis.saliency import (
    Classifier,
    _deconvolve,
    head_to_torch,
    randomised,
    rank_correlation,
    saliency,
    visual_backprop,
)
from featbank.classification.config import ClassifyConfig
from featbank.classification.grid import classify
from featbank.data.tasks import SplitSpec
from featbank.extraction.config import ExtractConfig
from featbank.extraction.engine import extract
from featbank.heads.registry import HeadOptions, make_head


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    cache = tmp_path_factory.mktemp("saliency") / "cache"
    collection = image_collection(cache)
    return cache, collection, tiny_run(cache, collection)


@pytest.mark.parametrize("head", ["logreg", "svm", "softmax"])
@pytest.mark.parametrize("normalize,pca,n_classes", [("standard", None, 3), ("l2", 5, 3),
                                                     ("none", None, 2)])
def test_stored_linear_heads_become_exact_torch_layers(head, normalize, pca, n_classes):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 12)).astype(np.float32) + 2
    y = np.array(["a", "b", "c"][:n_classes] * 45)[:90]
    X[y == "b"] += 1.5
    pipeline = make_head(head, HeadOptions(normalize=normalize, pca=pca)).fit(X, y)
    layer = head_to_torch(pipeline)
    with torch.no_grad():
        logits = layer(torch.from_numpy(X)).double().numpy()
    assert logits.shape == (90, n_classes)
    scores = pipeline.decision_function(X)
    if scores.ndim == 1:  # binary logreg and svm: one score
        scores = np.column_stack([-scores, scores])
    np.testing.assert_allclose(logits, scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(pipeline.classes_[logits.argmax(1)], pipeline.predict(X))


def test_a_head_that_is_not_linear_is_refused():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures

    X = np.random.default_rng(0).normal(size=(40, 3))
    pipeline = Pipeline([("poly", PolynomialFeatures(2)),
                         ("head", LogisticRegression())]).fit(X, X[:, 0] > 0)
    with pytest.raises(ValueError, match="is not linear"):
        head_to_torch(pipeline)


def test_deconvolution_reaches_the_size_asked():
    mask = torch.rand(2, 1, 13, 13)
    assert _deconvolve(mask, (27, 27)).shape == (2, 1, 27, 27)
    assert _deconvolve(mask, (13, 13)) is mask
    up = _deconvolve(torch.ones(1, 1, 6, 6), (12, 12))
    inner = up[0, 0, 1:-1, 1:-1]
    assert torch.allclose(inner, inner[0, 0].expand_as(inner))  # no checkerboard


def test_visual_backprop_maps_cover_the_input_and_are_class_agnostic():
    network = load_network("squeezenet1_1", "random")
    x = torch.randn(3, 3, 64, 64)
    maps = visual_backprop(network.trunk, network.stages, x)
    assert maps.shape == (3, 64, 64) and (maps >= 0).all() and maps.amax() > 0


def test_rank_correlation():
    a = np.random.default_rng(0).random((8, 8))
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.zeros_like(a)) is None  # a constant map ranks nothing


def test_randomised_copy_changes_every_layer_and_leaves_the_model():
    model = Classifier(load_network("squeezenet1_1", "random").trunk, nn.Linear(512, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = randomised(model, seed=3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    changed = [k for k, v in copy.state_dict().items() if k.endswith("weight")
               and not torch.equal(v, before[k])]
    assert len(changed) == sum(k.endswith("weight") for k in before)


@pytest.mark.parametrize("method", ["gradcam", "vbp", "ig"])
def test_maps_of_a_fine_tuned_run(art, method):
    cache, collection, run = art
    report = saliency(collection, SaliencyConfig(method=method, run=str(run), n=2, sanity=True,
                                                 steps=4, device="cpu", cache_root=str(cache),
                                                 progress=False))
    assert report["n_images"] == 2 and report["task"] == "label"
    assert report["classes"] == ["icon", "vase"]
    per_image = [i["rank_correlation"] for i in report["images"]]
    if method == "vbp":  # maps of activations: the randomised copy's differ (measured 0.94)
        assert report["sanity_rank_correlation"] == pytest.approx(np.mean(per_image))
        assert report["sanity_rank_correlation"] < 0.99 and report["sanity_images"] == 2
    else:  # this one-epoch run's gradients vanish: constant maps rank nothing
        assert per_image == [None, None] and report["sanity_rank_correlation"] is None
    for item in report["images"]:
        assert item["true"] in ("icon", "vase") and item["predicted"] in ("icon", "vase")
        assert open(item["overlay"], "rb").read(4) == b"\x89PNG"
    assert open(report["png"], "rb").read(4) == b"\x89PNG"
    assert json.loads(open(report["json"]).read())["method"] == method


def test_maps_of_a_trunk_with_a_stored_head_and_images_given(art, tmp_path):
    cache, collection, _ = art
    extract(collection, ExtractConfig(backbones="squeezenet1_1", weights="random",
                                      cache_root=str(cache), workers=0, device="cpu",
                                      progress=False))
    classify(collection, ClassifyConfig(heads="logreg", backbones="squeezenet1_1",
                                        cache_root=str(cache), jobs=1,
                                        split=SplitSpec(min_per_class=3)), warn=lambda m: None)
    config = SaliencyConfig(method="gradcam", backbone="squeezenet1_1", weights="random",
                            task="label", head="logreg", device="cpu",
                            images=[str(collection.path("vase/3.png")), "icon/1.png"],
                            cache_root=str(cache), progress=False)
    report = saliency(collection, config)
    assert [i["image"] for i in report["images"]] == ["vase/3.png", "icon/1.png"]
    assert [i["true"] for i in report["images"]] == ["vase", "icon"]
    assert report["source"] == "off-the-shelf logreg" and "sanity_rank_correlation" not in report
    outside = tmp_path / "outside.png"
    outside.write_bytes(collection.path("vase/3.png").read_bytes())
    config.images = [str(outside)]
    report = saliency(collection, config)
    assert report["images"][0]["true"] is None and report["accuracy"] is None
    with pytest.raises(FileNotFoundError, match="no stored svm head for task 'label'"):
        saliency(collection, SaliencyConfig(backbone="squeezenet1_1", weights="random",
                                            task="label", head="svm", cache_root=str(cache)))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown --method 'cam'"):
        SaliencyConfig(method="cam", run="r")
    with pytest.raises(FileNotFoundError, match="the folder has no trunk.pth"):
        SaliencyConfig(run="no/such/run")
    with pytest.raises(ValueError, match="needs --run RUN"):
        SaliencyConfig(backbone="squeezenet1_1")
    with pytest.raises(ValueError, match="saliency needs a linear head"):
        SaliencyConfig(backbone="squeezenet1_1", task="label", head="rf")
    with pytest.raises(ValueError, match="not both"):
        SaliencyConfig(run="r", backbone="squeezenet1_1")
