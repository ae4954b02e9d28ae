"""A table shows only results that still describe the cache: rows whose feature file, split
or fine-tuning images changed since are left out, and the table says how many and why."""
import numpy as np
from helpers import make_image, write_toy_cache

from featbank.api.grid import table
from featbank.classification.grid import ClassifyConfig, classify
from featbank.data.collection import Collection, from_folder, load_metadata, save_metadata
from featbank.data.tasks import SplitSpec
from featbank.evaluation.currency import Currency, current_rows
from featbank.finetuning.train import FinetuneConfig, finetune
from featbank.store.features import feature_files
from featbank.store.results import load_results
from featbank.store.writer import FeatureWriter


def _grid(tmp_path, folder):
    classify(load_metadata(folder), ClassifyConfig(heads="logreg", tasks="style",
                                                   cache_root=str(tmp_path), jobs=1),
             warn=lambda m: None)


def test_rows_of_rewritten_features_leave_the_table_until_recomputed(tmp_path):
    folder = write_toy_cache(tmp_path)
    _grid(tmp_path, folder)
    assert len(table("toy", cache=tmp_path).records) == 2
    entry = next(e for e in feature_files(folder) if e.backbone == "alexnet")
    data = entry.read()
    entry.path.unlink()
    out = FeatureWriter(entry.path, data.provenance)
    out.add_batch(data.ids, data.X[::-1].copy())  # other vectors, as many rows
    out.merge()
    said = []
    shown = table("toy", cache=tmp_path, warn=said.append)
    assert [r["backbone"] for r in shown.records] == ["resnet18"]
    assert said == ["1 stored result left out of the table: their features changed since "
                    "(classify.py or finetune.py computes them again)"]
    _grid(tmp_path, folder)
    assert len(table("toy", cache=tmp_path).records) == 2


def test_rows_of_a_relabelled_task_leave_the_table(tmp_path):
    folder = write_toy_cache(tmp_path)
    _grid(tmp_path, folder)
    collection = load_metadata(folder)
    labels = list(collection.labels["style"])
    labels[3] = "gothic" if labels[3] != "gothic" else "cubism"
    save_metadata(Collection(name="toy", root=collection.root, ids=collection.ids,
                             labels={**collection.labels, "style": labels}), folder)
    from featbank.data.saved_splits import follow_saved

    follow_saved(load_metadata(folder), folder, warn=lambda m: None)  # as extract.py does
    rows = load_results(folder)
    assert current_rows(rows, folder) == []
    assert Currency(folder).reason(rows[0]) == "their task's split changed since"


def test_rows_from_before_inputs_were_recorded_are_left_out(tmp_path):
    folder = write_toy_cache(tmp_path)
    _grid(tmp_path, folder)
    rows = [{k: v for k, v in r.items() if k != "inputs"} for r in load_results(folder)]
    said = []
    assert current_rows(rows, folder, warn=said.append) == []
    assert "stored before featbank recorded" in said[0]


def test_a_fine_tuning_row_leaves_the_table_when_its_images_change(tmp_path):
    root = tmp_path / "art"
    for c, cls in enumerate(["icon", "vase"]):
        for k in range(12):
            make_image(root / cls / f"{k}.png", seed=100 * c + k, size=(48, 48))
    collection = from_folder(root)
    cache = tmp_path / "cache"
    finetune(collection, FinetuneConfig(backbone="squeezenet1_1", task="label", init="random",
                                        epochs=1, image_size=48, batch_size=8, workers=0,
                                        cache_root=str(cache), progress=False,
                                        split=SplitSpec(min_per_class=3)), log=lambda m: None)
    folder = cache / "art"
    rows = load_results(folder)
    assert len(current_rows(rows, folder)) == 1
    image = root / "icon" / "3.png"
    stat = image.stat()
    import os

    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: still current
    assert len(current_rows(rows, folder)) == 1
    make_image(image, seed=999, size=(48, 48))  # another picture
    assert Currency(folder).reason(rows[0]) == "the images they were fine-tuned on changed since"
    assert np.isfinite(rows[0]["top1"])
