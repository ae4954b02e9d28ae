"""A cell is reused only while what it was computed from holds (the feature file's content,
the split), is retrained and says why otherwise; its head file records both; and a
fine-tuned trunk's features are never tested on the images the trunk trained on."""
import csv

import joblib
import numpy as np
import pytest
from helpers import make_image, write_toy_cache

from featbank.classification.grid import ClassifyConfig, classify
from featbank.data.collection import Collection, from_manifest, load_metadata, save_metadata
from featbank.data.saved_splits import load_or_make_split
from featbank.data.tasks import SplitSpec, ids_digest
from featbank.extraction.engine import ExtractConfig, extract
from featbank.finetuning.train import FinetuneConfig, finetune
from featbank.store.features import feature_files, read_features
from featbank.store.results import load_results, stored_path
from featbank.store.writer import FeatureWriter


def _config(tmp_path, **kw):
    return ClassifyConfig(**{**dict(heads="logreg", tasks="style", cache_root=str(tmp_path),
                                    jobs=1), **kw})


def _rewrite(folder, backbone="resnet18", seed=5):
    """The backbone's file written anew: as many rows, other vectors."""
    entry = next(e for e in feature_files(folder) if e.backbone == backbone)
    data = entry.read()
    path = entry.path
    attrs = dict(data.provenance)
    for name in (path, ):
        name.unlink()
    rng = np.random.default_rng(seed)
    out = FeatureWriter(path, attrs)
    out.add_batch(data.ids, data.X[rng.permutation(len(data.ids))])
    out.merge()
    return entry


def test_a_rewritten_feature_file_retrains_its_cells(tmp_path):
    folder = write_toy_cache(tmp_path)
    collection = load_metadata(folder)
    said = []
    first = classify(collection, _config(tmp_path), warn=said.append)
    assert len(first) == 2
    _rewrite(folder)
    said.clear()
    again = classify(collection, _config(tmp_path), warn=said.append)
    assert [r["backbone"] for r in again] == ["resnet18"]  # alexnet's cell is reused
    assert any("features changed since the cell was trained: retraining 1 cell" in m
               for m in said), said
    assert any("reusing 1 cell" in m for m in said)
    rows = load_results(folder)
    assert len(rows) == 2  # the stale row was replaced, not added to
    new = next(r for r in rows if r["backbone"] == "resnet18")
    assert new["inputs"]["features"] == {f"features/{p.name}": e.content_sha256 for p, e in
                                         [(e.path, e) for e in feature_files(folder)
                                          if e.backbone == "resnet18"]}
    head = joblib.load(stored_path(folder, new["head_path"]))
    assert head.featbank_cell_ == {"cell": new["cell"], "inputs": new["inputs"]}
    assert classify(collection, _config(tmp_path), warn=lambda m: None) == []


def test_a_relabelled_collection_retrains_every_cell_of_the_task(tmp_path):
    folder = write_toy_cache(tmp_path)
    collection = load_metadata(folder)
    classify(collection, _config(tmp_path), warn=lambda m: None)
    labels = list(collection.labels["style"])
    labels[0], labels[1] = "cubism", "gothic"  # two images recatalogued
    changed = Collection(name=collection.name, root=collection.root, ids=collection.ids,
                         labels={**collection.labels, "style": labels})
    save_metadata(changed, folder)
    said = []
    again = classify(load_metadata(folder), _config(tmp_path), warn=said.append)
    assert len(again) == 2
    assert any("2 relabelled (each kept its part)" in m for m in said), said
    assert any("the split of task 'style' changed since the cell was trained" in m for m in said)


def test_a_cell_refuses_when_every_test_image_trained_its_trunk(tmp_path):
    from types import SimpleNamespace

    from featbank.classification.cells import tested_ids

    folder = write_toy_cache(tmp_path)
    collection = load_metadata(folder)
    split = load_or_make_split(collection, "style", SplitSpec(), folder)
    everything = SimpleNamespace(fit_ids=frozenset(collection.ids), stem="f", backbone="b")
    with pytest.raises(ValueError, match="every test image of task 'style'.*was used to "
                                         "fine-tune the trunk"):
        tested_ids(split, everything)
    some = SimpleNamespace(fit_ids=frozenset(split.select("test")[0][:2]), stem="f",
                           backbone="b")
    said = []
    ids, _ = tested_ids(split, some, said.append)
    assert ids == split.select("test")[0][2:] and "2 of the 6 test images" in said[0]


@pytest.fixture
def two_tasks(tmp_path):
    """300 images of 3 classes with a second, unrelated task."""
    root = tmp_path / "art"
    rows = []
    for k in range(300):
        cls = "abc"[k % 3]
        make_image(root / f"{k:03d}.png", seed=k, size=(32, 32))
        rows.append({"image": f"{k:03d}.png", "label": cls, "other": "xy"[k // 3 % 2]})
    with open(root / "m.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "other"])
        writer.writeheader()
        writer.writerows(rows)
    return from_manifest(root / "m.csv", name="art")


def test_theta_hat_is_never_tested_on_its_trunk_s_training_images(tmp_path, two_tasks):
    cache = str(tmp_path / "cache")
    spec = SplitSpec(min_per_class=6)
    run = finetune(two_tasks, FinetuneConfig(
        backbone="squeezenet1_1", task="label", init="random", epochs=1, image_size=32,
        batch_size=32, workers=0, cache_root=cache, progress=False, split=spec),
        log=lambda m: None)
    trunk = str(run.folder / "trunk.pth")
    [report] = extract(two_tasks, ExtractConfig(backbones="squeezenet1_1", weights=trunk,
                                                cache_root=cache, workers=0, progress=False))
    folder = tmp_path / "cache" / "art"
    assert len(read_features(report.path).ids) == 300
    [entry] = feature_files(folder)
    fit = entry.fit_ids
    trained = load_or_make_split(two_tasks, "label", spec, folder)
    assert fit == set(trained.select("train")[0]) | set(trained.select("val")[0])
    said = []
    rows = classify(two_tasks, ClassifyConfig(heads="logreg", tasks="label,other",
                                              cache_root=cache, split=spec, jobs=1, repeats=3),
                    warn=said.append)
    assert len(rows) == 6
    for row in rows:
        seed = int(row["split_tag"].rsplit("seed", 1)[1])
        split = load_or_make_split(two_tasks, row["task"], SplitSpec(min_per_class=6, seed=seed),
                                   folder)
        test = [i for i in split.select("test")[0] if i not in fit]
        assert row["test_ids_sha256"] == ids_digest(test) and row["n_test"] == len(test)
        assert row["n_untested"] == len(split.select("test")[0]) - len(test)
        if row["task"] == "label" and seed == 0:  # its own split: the whole test part
            assert row["n_untested"] == 0
        else:  # others: most of their test images trained the trunk, and are left out
            assert row["n_untested"] > row["n_test"] > 0
    assert any("were used to fine-tune its trunk" in m for m in said)
