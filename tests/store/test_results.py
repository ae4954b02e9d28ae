"""The results store keeps paths relative to its folder: a moved cache keeps working."""
import shutil
from pathlib import Path

from helpers import image_collection

import featbank as fb
from featbank.store.results import load_results, stored_path


def test_stored_paths_resolve_in_the_store_folder(tmp_path):
    folder = tmp_path / "moved" / "art"
    assert stored_path(folder, "heads/label/x.joblib") == folder / "heads/label/x.joblib"
    # rows from before relative paths: their part from heads/ or finetune/ on
    assert stored_path(folder, "cache/art/heads/label/x.joblib") == folder / "heads/label/x.joblib"
    assert stored_path(folder, "/old/cache/art/finetune/r/trunk.pth") == folder / "finetune/r/trunk.pth"


def test_a_moved_cache_keeps_its_table_ensembles_and_saliency(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    image_collection(cache, per_class=12)
    for backbone in ("squeezenet1_1", "alexnet"):
        fb.extract(backbone=backbone, weights="random", collection="art", cache=cache,
                   workers=0, progress=False)
    settings = dict(cache=cache, task="label", min_per_class=3, jobs=1)
    fb.classify(head="logreg", backbone="squeezenet1_1,alexnet", ensemble=True, **settings)
    rows = load_results(cache / "art")
    assert all(not Path(r["head_path"]).is_absolute() for r in rows if r.get("head_path"))
    before = fb.results_table(cache=cache, min_per_class=3)

    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(cache, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")  # and run from another directory
    after = fb.results_table(cache=moved, min_per_class=3)
    assert after.equals(before) and after.attrs["bold"] == before.attrs["bold"]
    [ensemble] = fb.classify(head="logreg", backbone="squeezenet1_1,alexnet", ensemble=True,
                             force=True, **{**settings, "cache": moved})[-1:]
    assert ensemble["method"] == "ensemble"
    report = fb.saliency(backbone="squeezenet1_1", weights="random", task="label",
                         head="logreg", method="gradcam", cache=moved, n=2, min_per_class=3,
                         device="cpu", progress=False)
    assert report["n_images"] == 2 and Path(report["png"]).is_file()
