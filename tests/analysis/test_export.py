"""Export: the same vectors, ids and labels back from .npy and Parquet."""
import csv
import json

import numpy as np
import pytest
from helpers import write_toy_cache

from featbank.analysis.config import ExportConfig
from featbank.data.collection import load_metadata
from featbank.store.features import read_features


@pytest.fixture
def toy(tmp_path):
    cache = tmp_path / "cache"
    write_toy_cache(cache)
    return cache, load_metadata(cache / "toy")


def test_npy_export_round_trips(toy):
    from featbank.analysis.export import export

    cache, collection = toy
    report = export(collection, ExportConfig(backbone="resnet18", cache_root=str(cache)))
    features, ids, labels_csv = report["files"]
    X = np.load(features)  # no pickle needed for any of them
    names = np.load(ids)
    original = read_features(cache / "toy" / "features" / "resnet18__random.h5")
    assert np.array_equal(X, original.X) and names.tolist() == original.ids
    with open(labels_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == original.ids
    assert rows[0]["style"] == "baroque" and rows[0]["single"] == "one"
    assert json.loads(open(report["json"]).read())["n_rows"] == 60


def test_parquet_export_round_trips(toy):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from featbank.analysis.export import export

    cache, collection = toy
    report = export(collection, ExportConfig(backbone="alexnet", format="parquet",
                                             cache_root=str(cache)))
    df = pd.read_parquet(report["files"][0])
    X = np.stack(df["embedding"].to_numpy())
    original = read_features(cache / "toy" / "features" / "alexnet__random.h5")
    assert X.shape == (60, 16) and np.array_equal(X, original.X)
    assert df["id"].tolist() == original.ids and df["style"].iloc[-1] == "gothic"


def test_export_bad_format():
    with pytest.raises(ValueError, match="--format"):
        ExportConfig(backbone="resnet18", format="csv")


def test_hdf5_export_is_one_self_contained_file(toy, tmp_path):
    """A file to hand on: read with plain h5py after its cache (and shards) are gone."""
    import shutil

    import h5py

    from featbank.analysis.export import export

    cache, collection = toy
    original = read_features(cache / "toy" / "features" / "resnet18__random.h5")
    report = export(collection, ExportConfig(backbone="resnet18", format="hdf5",
                                             cache_root=str(cache)))
    [path] = report["files"]
    moved = tmp_path / "elsewhere" / "resnet18.h5"
    moved.parent.mkdir()
    shutil.move(path, moved)
    shutil.rmtree(cache)
    with h5py.File(moved, "r") as f:
        assert not f["features"].is_virtual and f.get("features", getlink=True).__class__ \
            is h5py.HardLink
        assert np.array_equal(f["features"][:], original.X)
        assert list(f["ids"].asstr()[:]) == original.ids
        assert f["labels/style"].asstr()[0] == "baroque"
        assert f.attrs["backbone"] == "resnet18" and f.attrs["content_sha256"]
    again = read_features(moved)  # featbank reads it as a feature file too
    assert again.ids == original.ids and np.array_equal(again.X, original.X)
