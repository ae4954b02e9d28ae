"""extract --layers: a feature file per layer from one forward pass, resumable per layer."""
import h5py
import numpy as np
import pytest
from helpers import HERITAGE, SQUEEZENET, make_image, needs_heritage, needs_squeezenet
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featbank.core.errors import BadInput
from featbank.data.collection import Collection, from_folder
from featbank.extraction.engine import ExtractConfig, extract
from featbank.store.features import read_features


def _config(tmp_path, **kw):
    settings = dict(backbones="squeezenet1_1", weights="random", cache_root=str(tmp_path / "cache"),
                    batch_size=4, workers=0, progress=False, device="cpu")
    settings.update(kw)
    return ExtractConfig(**settings)


def _by_layer(reports):
    return {r.layer: r for r in reports}


def test_layers_all_writes_a_file_per_layer_and_final_equals_the_single_layer_run(
        tmp_path, image_folder):
    collection = from_folder(image_folder)
    reports = _by_layer(extract(collection, _config(tmp_path, layers="all")))
    assert list(reports) == ["features.0", "features.3", "features.4", "features.6", "features.7",
                             "features.9", "features.10", "features.11", "features.12", "final"]
    final = read_features(reports["final"].path)
    [alone] = extract(collection, _config(tmp_path / "alone"))
    assert reports["final"].path.name == alone.path.name == "squeezenet1_1__random.h5"
    assert np.array_equal(final.X, read_features(alone.path).X)
    first = read_features(reports["features.0"].path)
    assert first.X.shape == (12, 64) and first.ids == final.ids
    assert first.provenance["layer"] == "features.0" and first.provenance["layer_index"] == 1
    assert first.provenance["pool"] == "gap" and final.provenance["layer"] == "final"
    # SqueezeNet's last Fire module, averaged, is what its trunk outputs (to the rounding of
    # the precision: a bf16 trunk's own pooled output is rounded to bf16, the tap's is not)
    bf16 = final.provenance["precision"] == "bf16"
    assert np.allclose(read_features(reports["features.12"].path).X, final.X,
                       rtol=4e-3 if bf16 else 0, atol=1e-6)
    assert not np.allclose(first.X[:, :8], final.X[:, :8])


def test_a_second_run_is_a_no_op_and_a_missing_layer_is_the_only_one_computed(
        tmp_path, image_folder, monkeypatch):
    collection = from_folder(image_folder)
    config = _config(tmp_path, layers="features.3,features.9,final")
    first = _by_layer(extract(collection, config))
    import featbank.extraction.loader as loader

    decoded = []
    real = loader.read_stamped
    monkeypatch.setattr(loader, "read_stamped", lambda path: decoded.append(path) or real(path))
    again = _by_layer(extract(collection, config))
    assert decoded == [] and all(r.n_added == 0 for r in again.values())
    kept = {name: r.path.stat().st_mtime_ns for name, r in first.items()}
    more = _by_layer(extract(collection, _config(tmp_path, layers="features.3,features.6,"
                                                                  "features.9,final")))
    assert more["features.6"].n_added == 12
    assert all(more[name].n_added == 0 for name in ("features.3", "features.9", "final"))
    assert {name: first[name].path.stat().st_mtime_ns for name in kept} == kept
    assert len(decoded) == 12


def test_images_added_later_reach_every_layer(tmp_path, image_folder):
    extract(from_folder(image_folder), _config(tmp_path, layers="2,final"))
    make_image(image_folder / "cats" / "late.jpg", seed=99, quality=95)
    reports = extract(from_folder(image_folder), _config(tmp_path, layers="2,final"))
    assert [(r.layer, r.n_rows, r.n_added) for r in reports] == [("features.3", 13, 1),
                                                                  ("final", 13, 1)]


def test_a_token_network_extracts_every_block_with_its_pool_recorded(tmp_path, image_folder):
    collection = from_folder(image_folder)
    config = _config(tmp_path, backbones="timm:vit_tiny_patch16_224", layers="all", pool="cls")
    reports = _by_layer(extract(collection, config))
    assert len(reports) == 14
    final = read_features(reports["final"].path)
    assert reports["final"].path.name == "timm-vit_tiny_patch16_224__random__cls.h5"
    assert final.provenance["pool"] == "cls" and final.X.shape == (12, 192)
    block = read_features(reports["blocks.11"].path)
    assert block.provenance["pool"] == "cls" and block.provenance["layer_index"] == 13
    with h5py.File(reports["patch_embed"].path) as f:
        assert f.attrs["pool"] == "mean"


def test_bad_layers_and_pools_are_one_line_before_any_file(tmp_path, image_folder):
    collection = from_folder(image_folder)
    with pytest.raises(BadInput, match="no such layer in squeezenet1_1"):
        extract(collection, _config(tmp_path, layers="features.99"))
    with pytest.raises(BadInput, match="--pool cls is for token networks"):
        extract(collection, _config(tmp_path, layers="all", pool="cls"))
    with pytest.raises(BadInput, match="--engine local"):
        _config(tmp_path, layers="all", engine="ray")
    assert not list((tmp_path / "cache" / "images" / "features").glob("*.h5"))


@pytest.mark.slow
@needs_heritage
@needs_squeezenet
def test_on_heritage_the_last_layers_transfer_best_and_final_is_the_single_layer_file(tmp_path):
    """Real images, real SqueezeNet weights: the trunk's output from --layers all is the
    file a plain run writes, and a head on the first stage's features does far worse
    (measured on these 202 images, 4-fold logistic regression: features.0 0.348, final
    0.836; on the whole test folder, classify.py: 0.407 and 0.929)."""
    full = from_folder(HERITAGE / "test", name="heritage")
    ids = full.ids[::7]
    label = dict(zip(full.ids, full.labels["label"]))
    collection = Collection(name="heritage", root=full.root, ids=ids,
                            labels={"label": [label[i] for i in ids]})
    layered = _by_layer(extract(collection, _config(tmp_path, weights=str(SQUEEZENET),
                                                    layers="1,features.12,final", workers=1,
                                                    batch_size=16)))
    [alone] = extract(collection, _config(tmp_path / "alone", weights=str(SQUEEZENET), workers=1,
                                          batch_size=16))
    final = read_features(layered["final"].path)
    assert np.array_equal(final.X, read_features(alone.path).X)
    assert np.allclose(read_features(layered["features.12"].path).X, final.X, atol=1e-5)

    def accuracy(layer):
        data = read_features(layered[layer].path)
        y = [label[i] for i in data.ids]
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        return cross_val_score(model, data.X, y, cv=StratifiedKFold(4, shuffle=True,
                                                                    random_state=0)).mean()
    first, last = accuracy("features.0"), accuracy("final")
    assert last >= first + 0.25, (first, last)
