"""analyze.py top-images: each channel's most activating images, entropy and overlap."""
import numpy as np
import pytest
import torch
from helpers import image_collection

from featbank.analysis.config import TopImagesConfig
from featbank.analysis.top_images import _entropy, _top_k, top_images
from featbank.extraction.config import ExtractConfig
from featbank.extraction.engine import extract
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    cache = tmp_path_factory.mktemp("top") / "cache"
    collection = image_collection(cache, classes=("icon", "vase", "coin"), per_class=8)
    return cache, collection


def _config(cache, **kw):
    settings = dict(backbone="squeezenet1_1", weights="random", k=4, workers=0, device="cpu",
                    cache_root=str(cache), progress=False)
    settings.update(kw)
    return TopImagesConfig(**settings)


def test_top_k_is_each_columns_largest_rows_in_order():
    x = np.random.default_rng(0).normal(size=(50, 7))
    expected = np.argsort(-x, axis=0)[:5].T
    np.testing.assert_array_equal(_top_k(x, 5), expected)


def test_entropy_in_bits():
    labels = np.array([["a", "a", "b", "b"], ["a", "a", "a", "a"], ["a", "b", "c", "d"]],
                      dtype=object)
    np.testing.assert_allclose(_entropy(labels), [1.0, 0.0, 2.0])


def test_a_trunk_against_itself_overlaps_fully(art):
    cache, collection = art
    report = top_images(collection, _config(cache, compare="random", stage="3"))
    assert report["source"] == "computed" and report["stage"] == "features.4"
    assert report["channels"] == 128 and report["n_images"] == 24
    assert report["overlap"]["min"] == 1.0 and len(report["overlap"]["per_channel"]) == 128
    assert report["entropy"] == report["entropy_compare"]
    assert 0 <= report["entropy"]["min"] <= report["entropy"]["max"] <= 2.0  # 4 images
    assert report["label_entropy"] == pytest.approx(np.log2(3))
    assert open(report["png"], "rb").read(4) == b"\x89PNG"


def test_a_changed_trunk_changes_some_top_sets(art, tmp_path):
    cache, collection = art
    state = load_trunk(get_spec("squeezenet1_1"), "random").state_dict()
    generator = torch.Generator().manual_seed(1)
    state = {k: v + 0.5 * v.float().std() * torch.randn(v.shape, generator=generator)
             if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "changed.pth")
    report = top_images(collection, _config(cache, compare=str(tmp_path / "changed.pth")))
    assert report["overlap"]["min"] < 1.0 and 0 <= report["overlap"]["mean"] <= 1


def test_the_last_stage_comes_from_the_feature_cache(art):
    cache, collection = art
    computed = top_images(collection, _config(cache))
    assert computed["source"] == "computed"  # no feature file yet
    extract(collection, ExtractConfig(backbones="squeezenet1_1", weights="random",
                                      cache_root=str(cache), workers=0, device="cpu",
                                      progress=False, precision="fp32"))
    cached = top_images(collection, _config(cache))
    assert cached["source"] == "feature cache" and cached["n_images"] == 24
    assert computed["entropy"]["per_channel"] == pytest.approx(cached["entropy"]["per_channel"])


def test_bad_requests(art):
    cache, collection = art
    with pytest.raises(ValueError, match="unknown task 'genre'"):
        top_images(collection, _config(cache, task="genre"))
    with pytest.raises(ValueError, match="--k 30 is more than the 24 images"):
        top_images(collection, _config(cache, k=30, stage="1"))
    with pytest.raises(ValueError, match="unknown --stage 'fc'"):
        top_images(collection, _config(cache, stage="fc"))
