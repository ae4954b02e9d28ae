import h5py
import joblib
import numpy as np
import pytest
from helpers import write_toy_cache

from featbank.classification.grid import ClassifyConfig, classify
from featbank.data.collection import load_metadata
from featbank.data.tasks import SplitSpec, subsample
from featbank.evaluation.reports import load_test_scores
from featbank.evaluation.stats import mean_average_precision
from featbank.evaluation.tables import build_table
from featbank.heads.registry import HeadOptions
from featbank.store.features import feature_files, read_features
from featbank.store.results import RESULT_KEYS, load_results


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
        pipeline = joblib.load(folder / row["head_path"])  # relative to the store
        assert list(pipeline.classes_) == ["baroque", "cubism", "gothic"]
        # chosen on validation, and the stored head is the chosen one
        [(name, value)] = row["tuned"].items()
        assert pipeline[-1].get_params()[name] == value
        assert row["head_engine"] == ("sklearn" if row["head"] == "logreg" else None)
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
    assert read_features(next((folder / "features").glob("resnet18*.h5"))).X.dtype == np.float16
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


def test_a_damaged_feature_file_is_named_and_an_empty_one_skipped(tmp_path):
    folder = write_toy_cache(tmp_path)
    damaged = folder / "features" / "vgg19__imagenet.h5"
    damaged.write_bytes(b"half a file")
    with pytest.raises(ValueError, match=r"vgg19__imagenet.h5 cannot be opened .*extract.py"):
        classify(load_metadata(folder), _config(tmp_path, heads="logreg"), warn=lambda m: None)
    damaged.unlink()
    with h5py.File(folder / "features" / "alexnet__sha256-000000000000.h5", "w") as f:
        for name in ("ids", "skipped_ids", "skipped_reasons"):
            f.create_dataset(name, shape=(0,), dtype=h5py.string_dtype())
        f.create_dataset("features", shape=(0, 4), dtype="f4")
        f.attrs.update(backbone="alexnet", weights="sha256:0", feature_dim=4)
    notes = []
    rows = classify(load_metadata(folder), _config(tmp_path, heads="logreg"), warn=notes.append)
    assert {(r["backbone"], r["weights"]) for r in rows} == {("resnet18", "random"),
                                                             ("alexnet", "random")}
    [note] = [n for n in notes if n.startswith("skipping")]
    assert "alexnet__sha256-000000000000.h5: it holds no rows" in note


def _extra_file(cache, backbone, weights, keep):
    """Another feature file of the toy collection: resnet18's vectors for the rows ``keep``."""
    from featbank.store.provenance import feature_path
    from featbank.store.writer import FeatureWriter

    data = read_features(cache / "toy" / "features" / "resnet18__random.h5")
    out = FeatureWriter(feature_path(cache, "toy", backbone, weights),
                      {**data.provenance, "backbone": backbone, "weights": weights,
                       "weights_exact": weights})
    out.add_batch([data.ids[k] for k in keep], data.X[keep] * 2 + 1)
    out.merge()
    return out.path


def test_combined_backbones_concatenate_on_shared_ids(tmp_path):
    folder = write_toy_cache(tmp_path)
    _extra_file(tmp_path, "vgg19", "random", keep=list(range(0, 60, 2)))
    [row] = classify(load_metadata(folder), _config(tmp_path, heads="logreg",
                                                    backbones="resnet18+vgg19"),
                     warn=lambda m: None)
    assert row["backbone"] == "resnet18+vgg19" and row["weights"] == "random+random"
    assert row["feature_dim"] == 64 and joblib.load(folder / row["head_path"]).n_features_in_ == 64
    assert row["n_test"] + row["n_val"] + row["n_train"] == 30  # only the ids both files hold
    assert row["top1"] >= 0.9 and "resnet18__random.h5 + " in row["features"]
    # two trunks' outputs joined are a trunk output: no layer column in the table
    assert row["layer"] == "final" and "layer" not in build_table([row], folder=folder)[0]


def test_combination_parts_must_each_name_one_file(tmp_path):
    folder = write_toy_cache(tmp_path)
    _extra_file(tmp_path, "resnet18", "sha256:" + "ab12" * 16, keep=list(range(60)))
    collection = load_metadata(folder)
    with pytest.raises(ValueError, match="name one in the combination"):
        classify(collection, _config(tmp_path, heads="logreg", backbones="resnet18+alexnet"))
    rows = classify(collection, _config(tmp_path, heads="logreg",
                                        backbones="resnet18@ab12+alexnet,resnet18@random"),
                    warn=lambda m: None)
    assert sorted((r["backbone"], r["weights"]) for r in rows) == [
        ("resnet18", "random"), ("resnet18+alexnet", "sha256:" + "ab12" * 16 + "+random")]
    for bad, message in [("resnet18@zz", "sha256 prefix"), ("resnet18+resnet18", "twice"),
                         ("resnet18+nope", "unknown backbone"), ("all,resnet18", "stands alone")]:
        with pytest.raises(ValueError, match=message):
            _config(tmp_path, backbones=bad)


def test_ensemble_averages_member_probabilities(tmp_path):
    from featbank.heads.registry import class_scores

    folder = write_toy_cache(tmp_path)
    collection = load_metadata(folder)
    config = _config(tmp_path, heads="logreg", backbones="resnet18,alexnet", ensemble=True)
    rows = classify(collection, config, warn=lambda m: None)
    [ensemble] = [r for r in rows if r["method"] == "ensemble"]
    members = [r for r in rows if r["method"] == "off-the-shelf"]
    assert ensemble["backbone"] == "resnet18+alexnet" and ensemble["head"] == "logreg"
    assert ensemble["member_top1"] == [m["top1"] for m in members]
    assert ensemble["test_ids_sha256"] == members[0]["test_ids_sha256"]
    # the same number from the stored member heads, by hand
    split_ids = [r["test_ids_sha256"] for r in members]
    assert len(set(split_ids)) == 1
    from featbank.data.saved_splits import load_or_make_split
    split = load_or_make_split(collection, "style", config.split, folder)
    ids, labels = split.select("test")
    total = 0
    for member in members:
        data = read_features(folder / member["features"])
        pipeline = joblib.load(folder / member["head_path"])
        total = total + class_scores(pipeline, data.X[[data.ids.index(i) for i in ids]])
    predicted = pipeline.classes_[np.argmax(total, axis=1)]
    assert ensemble["top1"] == pytest.approx(np.mean(predicted == np.array(labels)))
    assert classify(collection, config, warn=lambda m: None) == []  # stored once
    with pytest.raises(ValueError, match="at least two feature sources"):
        classify(collection, _config(tmp_path, heads="logreg", backbones="alexnet",
                                     ensemble=True))


def _multi_label_cache(cache, n=150, dim=24, seed=0, backbones=("resnet18",)):
    """Images tagged ``style;setting`` (3 styles x 2 settings), features encoding both
    (each backbone's with noise of its own)."""
    from featbank.data.collection import Collection, save_metadata
    from featbank.store.provenance import feature_path
    from featbank.store.writer import FeatureWriter

    rng = np.random.default_rng(seed)
    style, setting = rng.integers(0, 3, n), rng.integers(0, 2, n)
    ids = [f"img{k:03d}.jpg" for k in range(n)]
    tags = [f"{'abc'[s]};{('indoor', 'outdoor')[t]}" for s, t in zip(style, setting)]
    collection = Collection(name="ml", root=cache / "images", ids=ids,
                            labels={"tags": tags, "group": [f"g{k // 3}" for k in range(n)]},
                            multi_label={"tags": ";"})
    folder = cache / "ml"
    save_metadata(collection, folder)
    signal = np.c_[np.eye(3)[style] * 2, np.eye(2)[setting] * 2, np.zeros((n, dim - 5))]
    for backbone in backbones:
        X = (signal + rng.normal(size=signal.shape)).astype(np.float32)
        attrs = {"backbone": backbone, "feature_dim": dim, "weights": "random",
                 "input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash",
                 "crop_pct": 1.0, "interpolation": "bilinear", "dtype": "float32",
                 "collection": "ml"}
        out = FeatureWriter(feature_path(cache, "ml", backbone, "random"), attrs)
        out.add_batch(ids, X)
        out.merge()
    return folder


def test_multi_label_task_scored_by_map_with_every_head(tmp_path):
    folder = _multi_label_cache(tmp_path)
    collection = load_metadata(folder)
    assert collection.multi_label == {"tags": ";"}
    rows = classify(collection, _config(tmp_path, heads="all", tasks="tags"),
                    warn=lambda m: None)
    assert sorted(r["head"] for r in rows) == ["knn", "logreg", "rf", "softmax", "svm"]
    for row in rows:
        assert row["n_classes"] == 5 and row["mAP"] > 0.8, row
        low, high = row["mAP_ci"]
        assert low <= row["mAP"] <= high and high > low
        assert row["top1_ci"][0] <= row["top1"] <= row["top1_ci"][1]
        pipeline = joblib.load(folder / row["head_path"])  # relative to the store
        assert type(pipeline[-1]).__name__ == "OneVsRestClassifier"
        stored = load_test_scores(folder, row)  # for the table's paired test
        assert len(stored["truth"]) == row["n_test"] and len(stored["map_resamples"]) == 1000
        assert mean_average_precision(stored["truth"], stored["scores"])[0] == \
            pytest.approx(row["mAP"], abs=1e-6)
    [record] = build_table(rows, folder=folder)[1]
    best = max(rows, key=lambda r: r["mAP"])
    assert best["head"] in record["marked"]
    from featbank.evaluation.stats import paired_map_p

    reference = load_test_scores(folder, best)
    for row in rows:  # bold exactly where the paired bootstrap cannot tell it from the best
        if row is not best:
            other = load_test_scores(folder, row)
            p = paired_map_p(reference["truth"], reference["scores"], other["scores"])
            assert (row["head"] in record["marked"]) == (p >= 0.05), (row["head"], p)
    per_class = next((folder / "reports" / "tags").glob("*logreg*_per_class.csv")).read_text()
    assert per_class.startswith("class,average_precision,positives")
    split = (folder / "splits").glob("tags__*.csv")
    assert any("a;indoor" in p.read_text() for p in split)


def test_multi_label_ensemble_averages_each_labels_probability(tmp_path):
    from scipy.special import expit

    from featbank.data.saved_splits import load_or_make_split
    from featbank.heads.registry import class_scores

    folder = _multi_label_cache(tmp_path, backbones=("resnet18", "alexnet"))
    collection = load_metadata(folder)
    config = _config(tmp_path, heads="logreg,svm", tasks="tags", backbones="resnet18,alexnet",
                     ensemble=True)
    rows = classify(collection, config, warn=lambda m: None)
    ensembles = {r["head"]: r for r in rows if r["method"] == "ensemble"}
    assert sorted(ensembles) == ["logreg", "svm"]
    split = load_or_make_split(collection, "tags", config.split, folder)
    ids, labels = split.select("test")
    Y = split.indicator(labels)
    for head, row in ensembles.items():  # by hand, from the stored member heads
        members = [r for r in rows if r["method"] == "off-the-shelf" and r["head"] == head]
        total = 0
        for member in members:
            data = read_features(folder / member["features"])
            pipeline = joblib.load(folder / member["head_path"])
            X = data.X[[data.ids.index(i) for i in ids]]
            # svm has no probabilities: each label's sigmoid of its decision score
            total = total + (pipeline.predict_proba(X) if head == "logreg"
                             else expit(class_scores(pipeline, X)))
        assert row["mAP"] == pytest.approx(mean_average_precision(Y, total / 2)[0])
        assert row["mAP"] > max(m["mAP"] for m in members)  # the noise of each backbone averages out
        assert [m["mAP"] for m in row["members"]] == [m["mAP"] for m in members]
        assert load_test_scores(folder, row)["scores"].shape == (len(ids), 5)
    assert ensembles["svm"]["ensemble_scores"].startswith("sigmoid")
    columns, records = build_table(load_results(folder), folder=folder)
    [both] = [r for r in records if r["backbone"] == "resnet18+alexnet"]
    assert both["task"] == "tags (mAP)" and both["marked"]
    assert both["logreg ensemble"] == pytest.approx(ensembles["logreg"]["mAP"])


def test_grouped_repeats_name_their_splits(tmp_path):
    folder = write_toy_cache(tmp_path)
    collection = load_metadata(folder)
    collection.labels["group"] = [f"g{k // 2}" for k in range(len(collection.ids))]
    config = _config(tmp_path, heads="logreg", split=SplitSpec(group_by="group"), repeats=2)
    rows = classify(collection, config, warn=lambda m: None)
    assert sorted(r["split_tag"] for r in rows) == sorted(
        f"80-10-10_min10_seed{s}_by-group" for s in (0, 0, 1, 1))
    assert all(r["split_group_by"] == "group" for r in rows)


def test_layers_all_trains_a_cell_per_layer_and_the_default_keeps_the_final_files(tmp_path):
    from helpers import write_layered_cache

    folder = write_layered_cache(tmp_path)
    collection = load_metadata(folder)
    quiet = lambda m: None  # noqa: E731
    [final] = classify(collection, _config(tmp_path, heads="logreg"), warn=quiet)
    assert final["layer"] == "final" and final["pool"] == "model"
    rows = classify(collection, _config(tmp_path, heads="logreg", layers="all"), warn=quiet)
    assert sorted((r["layer"], r["layer_index"]) for r in rows) == [("layer1", 2), ("layer3", 3)]
    assert len({r["cell"] for r in rows} | {final["cell"]}) == 3  # the final cell was reused
    columns, records = build_table(load_results(folder))
    assert columns[:5] == ["task", "backbone", "weights", "layer", "dim"]
    assert [(r["layer"], r["dim"]) for r in records] == [("layer1", 16), ("layer3", 16),
                                                          ("final", 32)]
    scores = [r["logreg"] for r in records]
    assert scores[0] < scores[2] and scores[2] == final["top1"]
    with pytest.raises(Exception, match="--layers layer9: no such layer among the feature "
                                        "files \\(layer1, layer3, final\\)"):
        classify(collection, _config(tmp_path, heads="logreg", layers="layer9"), warn=quiet)


def test_every_row_carries_its_calibration_error(tmp_path):
    folder = write_toy_cache(tmp_path)
    rows = classify(load_metadata(folder), _config(tmp_path), warn=lambda m: None)
    for row in rows:
        assert 0 <= row["ece"] <= 1 and 0 <= row["classwise_ece"] <= 1
        assert 0 <= row["val_ece"] <= 1


def test_calibrated_cells_are_their_own_cells_and_write_reliability_diagrams(tmp_path):
    folder = write_toy_cache(tmp_path, backbones=(("resnet18", 32),))
    collection = load_metadata(folder)
    plain = classify(collection, _config(tmp_path, heads="svm"), warn=lambda m: None)
    tuned = classify(collection, _config(tmp_path, heads="svm", calibrate="temperature",
                                         reliability=True), warn=lambda m: None)
    assert len(plain) == len(tuned) == 1 and plain[0]["cell"] != tuned[0]["cell"]
    assert tuned[0]["calibrate"] == "temperature"
    assert list((folder / "reports" / "style").glob("*_reliability.png"))
    with pytest.raises(ValueError, match="--calibrate"):
        _config(tmp_path, calibrate="platt")


def test_shots_train_on_k_images_per_class_drawn_alike_for_every_backbone(tmp_path):
    from featbank.classification.cells import few_shot
    from featbank.data.saved_splits import load_or_make_split

    folder = write_toy_cache(tmp_path)
    collection = load_metadata(folder)
    rows = classify(collection, _config(tmp_path, heads="logreg", shots=(1, 4), repeats=2),
                    warn=lambda m: None)
    few = [r for r in rows if r.get("shots")]
    assert len(few) == 2 * 2 * 2 and len(rows) == len(few) + 2  # and the full training part
    assert {r["n_train"] for r in few if r["shots"] == 1} == {3}
    assert {r["n_train"] for r in few if r["shots"] == 4} == {12}
    split = load_or_make_split(collection, "style", SplitSpec(), folder)
    assert few_shot(split, 4, 0) == few_shot(split, 4, 0) != few_shot(split, 4, 1)
    columns, records = build_table(load_results(folder))
    assert "logreg (1-shot)" in columns and "logreg (4-shot)" in columns and "logreg" in columns
    assert all(r["repeats"]["logreg (4-shot)"] == 2 for r in records)
