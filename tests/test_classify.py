import h5py
import joblib
import numpy as np
import pytest

from featbank.cache import feature_files, read_features
from featbank.classify import ClassifyConfig, classify
from featbank.collection import load_metadata
from featbank.evaluate import RESULT_KEYS, load_results
from featbank.heads import HeadOptions
from featbank.tasks import subsample
from conftest import write_toy_cache


def _config(tmp_path, **kw):
    settings = dict(heads="logreg,knn", tasks="style", cache_root=str(tmp_path), jobs=1)
    settings.update(kw)
    return ClassifyConfig(**settings)


def test_grid_rows_follow_the_contract(tmp_path):
    folder = write_toy_cache(tmp_path)
    rows = classify(load_metadata(folder), _config(tmp_path), warn=lambda m: None)
    assert len(rows) == 4  # 2 backbones x 2 heads
    for row in rows:
        assert all(k in row for k in RESULT_KEYS)
        assert row["method"] == "off-the-shelf" and row["split"] == "test"
        assert row["top1"] >= 0.9 and row["n_test"] == 6 and row["n_train"] == 48
        pipeline = joblib.load(row["head_path"])
        assert list(pipeline.classes_) == ["baroque", "cubism", "gothic"]
    assert len(load_results(folder)) == 4
    assert len(list((folder / "reports" / "style").glob("*_confusion.png"))) == 4


def test_backbones_share_the_identical_split(tmp_path):
    folder = write_toy_cache(tmp_path)
    rows = classify(load_metadata(folder), _config(tmp_path, heads="logreg"), warn=lambda m: None)
    assert {r["backbone"] for r in rows} == {"resnet18", "alexnet"}
    assert len({r["test_ids_sha256"] for r in rows}) == 1


def test_cells_are_reused_unless_forced(tmp_path):
    folder = write_toy_cache(tmp_path)
    collection = load_metadata(folder)
    classify(collection, _config(tmp_path), warn=lambda m: None)
    assert classify(collection, _config(tmp_path), warn=lambda m: None) == []
    assert len(classify(collection, _config(tmp_path, force=True), warn=lambda m: None)) == 4
    other = _config(tmp_path, options=HeadOptions(normalize="l2"))
    assert len(classify(collection, other, warn=lambda m: None)) == 4  # a new variant


def test_parallel_cells_give_the_same_numbers(tmp_path):
    a = write_toy_cache(tmp_path / "a")
    b = write_toy_cache(tmp_path / "b")
    one = classify(load_metadata(a), _config(tmp_path / "a", jobs=1), warn=lambda m: None)
    two = classify(load_metadata(b), _config(tmp_path / "b", jobs=2), warn=lambda m: None)
    key = lambda r: (r["backbone"], r["head"])  # noqa: E731
    assert [r["top1"] for r in sorted(one, key=key)] == [r["top1"] for r in sorted(two, key=key)]


def test_float16_cache_and_ablation_options(tmp_path):
    folder = write_toy_cache(tmp_path, dtype="float16")
    assert read_features(next((folder / "features").glob("resnet18*.h5"))).features.dtype == np.float16
    config = _config(tmp_path, heads="softmax", backbones="resnet18", train_fraction=0.5,
                     options=HeadOptions(pca=4, normalize="l2", balanced=True))
    [row] = classify(load_metadata(folder), config, warn=lambda m: None)
    assert row["n_train"] == 24 and row["n_params"] == 4 * 3 + 3 and row["top1"] >= 0.8


def test_all_tasks_skips_those_that_cannot_be_split(tmp_path):
    folder = write_toy_cache(tmp_path)
    notes = []
    rows = classify(load_metadata(folder), _config(tmp_path, tasks="all", heads="logreg"),
                    warn=notes.append)
    assert {r["task"] for r in rows} == {"style"}
    assert any("single" in n for n in notes) and any("tiny" in n for n in notes)


def test_bad_requests(tmp_path):
    folder = write_toy_cache(tmp_path)
    collection = load_metadata(folder)
    with pytest.raises(ValueError, match="unknown head 'nope'"):
        classify(collection, _config(tmp_path, heads="nope"))
    with pytest.raises(ValueError, match="no features of vgg19.*alexnet, resnet18"):
        feature_files(folder, "vgg19")
    with pytest.raises(ValueError, match="train-fraction"):
        _config(tmp_path, train_fraction=0)


def test_subsample_is_stratified_and_keeps_every_class():
    labels = np.array(["a"] * 40 + ["b"] * 3)
    rows = subsample(labels, 0.25, seed=0)
    assert (labels[rows] == "a").sum() == 10 and (labels[rows] == "b").sum() == 1


def test_unusable_feature_files_are_named_and_skipped(tmp_path):
    folder = write_toy_cache(tmp_path)
    (folder / "features" / "vgg19__imagenet.h5").write_bytes(b"half a file")
    with h5py.File(folder / "features" / "alexnet__sha256-000000000000.h5", "w") as f:
        f.create_dataset("ids", shape=(0,), dtype=h5py.string_dtype())
        f.create_dataset("features", shape=(0, 4), dtype="f4")
        f.attrs.update(backbone="alexnet", weights="sha256:0", feature_dim=4)
    notes = []
    rows = classify(load_metadata(folder), _config(tmp_path, heads="logreg"), warn=notes.append)
    assert {(r["backbone"], r["weights"]) for r in rows} == {("resnet18", "random"),
                                                             ("alexnet", "random")}
    named = [n for n in notes if n.startswith("skipping")]
    assert len(named) == 2 and "vgg19__imagenet.h5: not a readable feature file" in named[1]
    assert "holds no rows" in named[0]
