import h5py
import numpy as np
import pytest

from featbank.cache import FeatureFile, feature_path, read_features

ATTRS = {"backbone": "toy", "feature_dim": 3, "weights": "random", "input_size": 8,
         "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "squash", "crop_pct": 1.0,
         "interpolation": "bilinear", "dtype": "float32", "collection": "c",
         "featbank_version": "0", "torch_version": "0", "created": "today"}


def test_rows_order_and_attributes_round_trip(tmp_path):
    out = FeatureFile(tmp_path / "f.h5", ATTRS)
    out.add_batch(["b/1.jpg", "a/2.jpg"], np.array([[1, 2, 3], [4, 5, 6]], np.float32))
    out.add_batch(["c/3.jpg"], np.array([[7, 8, 9]], np.float32), {"bad.jpg": "truncated"})
    assert out.merge() == 3
    data = read_features(tmp_path / "f.h5")
    assert data.ids == ["b/1.jpg", "a/2.jpg", "c/3.jpg"]
    assert data.features.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert data.skipped == {"bad.jpg": "truncated"}
    assert data.attrs["backbone"] == "toy" and data.attrs["feature_dim"] == 3
    assert not out.parts.exists()
    with h5py.File(tmp_path / "f.h5") as f:  # plain h5py reads the contract
        assert f["features"].dtype == np.float32 and f["ids"].asstr()[0] == "b/1.jpg"


def test_done_ids_count_parts_file_and_skipped(tmp_path):
    out = FeatureFile(tmp_path / "f.h5", ATTRS)
    out.add_batch(["x"], np.zeros((1, 3), np.float32), {"y": "bad"})
    assert out.done_ids() == {"x", "y"}
    out.merge()
    out.add_batch(["z"], np.zeros((1, 3), np.float32))
    assert out.done_ids() == {"x", "y", "z"}


def test_merge_appends_and_ignores_rows_already_merged(tmp_path):
    out = FeatureFile(tmp_path / "f.h5", ATTRS)
    out.add_batch(["x"], np.ones((1, 3), np.float32))
    out.merge()
    # A run that died after renaming the merged file but before dropping its parts:
    out.add_batch(["x", "w"], np.full((2, 3), 2, np.float32))
    out.merge()
    data = read_features(tmp_path / "f.h5")
    assert data.ids == ["x", "w"] and data.features[0].tolist() == [1, 1, 1]


def test_other_provenance_is_never_mixed_in(tmp_path):
    FeatureFile(tmp_path / "f.h5", ATTRS).merge()
    with pytest.raises(ValueError, match="input_size=8.*delete it"):
        FeatureFile(tmp_path / "f.h5", {**ATTRS, "input_size": 224}).check_compatible()
    with pytest.raises(ValueError, match="weights"):
        FeatureFile(tmp_path / "f.h5", {**ATTRS, "weights": "imagenet"}).check_compatible()
    FeatureFile(tmp_path / "f.h5", {**ATTRS, "created": "later"}).check_compatible()


def test_float16_storage(tmp_path):
    out = FeatureFile(tmp_path / "f.h5", {**ATTRS, "dtype": "float16"})
    out.add_batch(["x"], np.array([[1.5, 2, 3]], np.float32))
    out.merge()
    assert read_features(tmp_path / "f.h5").features.dtype == np.float16


def test_feature_path_names():
    assert feature_path("cache", "demo", "timm:resnet10t", "sha256:" + "ab" * 32).name == \
        "timm-resnet10t__sha256-abababababab.h5"
    assert feature_path("cache", "demo", "vgg19", "imagenet").as_posix() == \
        "cache/demo/features/vgg19__imagenet.h5"
