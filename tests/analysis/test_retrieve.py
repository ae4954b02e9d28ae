"""Retrieval on cached features: figures, per-class breakdown, pictures, and lookups
of image files through the trunk that made the cache."""
import json

import pytest
from helpers import write_toy_cache
from PIL import Image

from featbank.analysis.config import RetrieveConfig
from featbank.data.collection import load_metadata


@pytest.fixture
def toy(tmp_path):
    write_toy_cache(tmp_path / "cache")
    return tmp_path / "cache"


def test_retrieval_scores_separable_classes_and_writes_pictures(toy):
    from featbank.analysis.retrieve import retrieve

    collection = load_metadata(toy / "toy")
    report = retrieve(collection, RetrieveConfig(backbone="resnet18", task="style", k=5,
                                                 sheet=3, cache_root=str(toy), progress=False))
    assert report["n_queries"] == 6 and report["n_gallery"] == 54  # test vs train+val
    assert report["precision_at_k"] > 0.9 and report["map_at_k"] > 0.9
    assert report["chance_precision_at_k"] == pytest.approx(1 / 3)
    assert set(report["per_class"]) == {"baroque", "cubism", "gothic"}
    assert all(c["n_queries"] == 2 for c in report["per_class"].values())
    saved = json.loads(open(report["json"]).read())
    assert saved["precision_at_k"] == report["precision_at_k"] and saved["k"] == 5
    assert saved["weights_exact"] and saved["split_tag"] == "80-10-10_min10_seed0"
    sheet = Image.open(report["contact_sheet"])
    assert sheet.height > 3 * 112  # three query rows
    page = open(report["html"]).read()
    assert page.count('<div class="row">') == 3 and "thumbs/" in page


def test_retrieval_errors_name_the_problem(toy):
    from featbank.analysis.retrieve import retrieve

    collection = load_metadata(toy / "toy")
    base = dict(cache_root=str(toy), progress=False)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        retrieve(collection, RetrieveConfig(backbone="resnet18", task="nope", **base))
    with pytest.raises(ValueError, match="gallery holds 54"):
        retrieve(collection, RetrieveConfig(backbone="resnet18", task="style", k=55, **base))
    with pytest.raises(ValueError, match="no features of vgg19"):
        retrieve(collection, RetrieveConfig(backbone="vgg19", task="style", **base))
    with pytest.raises(ValueError, match="unknown backbone"):
        RetrieveConfig(backbone="nope", task="style")
    with pytest.raises(ValueError, match="one backbone"):
        RetrieveConfig(backbone="resnet18,alexnet", task="style")
    with pytest.raises(ValueError, match="--task"):
        RetrieveConfig(backbone="resnet18")


def test_query_image_finds_itself_through_the_same_trunk(tmp_path, image_folder):
    """A collection image given as a query is extracted on the fly; its nearest
    neighbour is its own cached row, at similarity 1."""
    from featbank.analysis.retrieve import lookup
    from featbank.data.collection import from_folder
    from featbank.extraction.config import ExtractConfig
    from featbank.extraction.engine import extract

    cache = tmp_path / "cache"
    collection = from_folder(image_folder, name="pets")
    extract(collection, ExtractConfig(backbones="squeezenet1_1", weights="random",
                                      cache_root=str(cache), workers=0, progress=False))
    query = image_folder / "dogs" / "img3.jpg"
    report = lookup(collection, RetrieveConfig(backbone="squeezenet1_1", queries=[str(query)],
                                               k=3, cache_root=str(cache), progress=False))
    [result] = report["queries"]
    best = result["neighbours"][0]
    assert best["id"] == "dogs/img3.jpg" and best["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert best["labels"] == {"label": "dogs"}
    assert [n["similarity"] for n in result["neighbours"]] == sorted(
        (n["similarity"] for n in result["neighbours"]), reverse=True)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    with pytest.raises(ValueError, match="notes.jpg cannot be read"):
        lookup(collection, RetrieveConfig(backbone="squeezenet1_1", queries=[str(not_an_image)],
                                          cache_root=str(cache), progress=False))


def test_query_with_a_weights_file_needs_that_file(tmp_path, image_folder):
    import torch

    from featbank.analysis.retrieve import lookup
    from featbank.data.collection import from_folder
    from featbank.extraction.config import ExtractConfig
    from featbank.extraction.engine import extract
    from featbank.models.registry import get_spec

    torch.manual_seed(5)
    weights = tmp_path / "trunk.pth"
    torch.save(get_spec("squeezenet1_1").build(False).state_dict(), weights)
    cache = tmp_path / "cache"
    collection = from_folder(image_folder, name="pets")
    extract(collection, ExtractConfig(backbones="squeezenet1_1", weights=str(weights),
                                      cache_root=str(cache), workers=0, progress=False))
    query = [str(image_folder / "cats" / "img1.jpg")]
    config = RetrieveConfig(backbone="squeezenet1_1", queries=query, k=1, cache_root=str(cache),
                            progress=False)
    assert lookup(collection, config)["queries"][0]["neighbours"][0]["id"] == "cats/img1.jpg"
    moved = weights.rename(tmp_path / "moved.pth")
    (cache / "pets" / "extract_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="--weights-file"):
        lookup(collection, config)
    config.weights_file = str(moved)
    assert lookup(collection, config)["queries"][0]["neighbours"][0]["similarity"] > 0.9999
    other = tmp_path / "other.pth"
    torch.save({"x": torch.zeros(1)}, other)
    config.weights_file = str(other)
    with pytest.raises(ValueError, match="is not the file"):
        lookup(collection, config)
