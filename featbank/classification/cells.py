"""One cell of the off-the-shelf grid: a head trained on a feature file (or a concatenation)
for one task, on the task's saved split; its identity, its inputs, its row and its files.

A cell's identity (:func:`cell_key`) is what it is: collection, task, backbone, exact
weights, head, every identity field of the config, the layer. Its inputs
(:func:`cell_inputs`) are what it was computed from: each feature file's content
(``content_sha256``) and the split's digest. A stored row is reused only while both
hold; otherwise the cell is trained again and its row replaced (:func:`stale_reason`
says why). Its head file and per-image scores are named by both, and record them.

A fine-tuned trunk's features are never tested on the images the trunk was trained
or validated on (``FeatureFile.fit_ids``): those leave the test part, and a cell with
no test image left is refused.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import joblib
import numpy as np

from featbank.classification.config import ClassifyConfig
from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path, safe_name
from featbank.core.settings import digest, identity
from featbank.data.collection import Collection
from featbank.data.saved_splits import load_or_make_split
from featbank.data.tasks import Split, SplitSpec, subsample
from featbank.evaluation.calibration import probabilities, reliability
from featbank.evaluation.metrics import hits, metrics
from featbank.evaluation.plots import plot_reliability
from featbank.evaluation.reports import result_row, save_test_scores, write_reports
from featbank.heads.registry import HEADS, class_scores, fit_head, make_head, n_parameters
from featbank.store.features import Concatenation


def cell_key(collection: str, task: str, entry: Concatenation, head: str,
             config: ClassifyConfig, shot: tuple[int, int] | None = None) -> str:
    """A cell's identity: what decides its result, every identity field of the config included
    (and the layer, for a file of another than the trunk's output; the k-shot draw, for a
    few-shot cell)."""
    layer = [entry.layer_tag] if entry.layer_tag else []
    few = [f"{shot[0]}-shot", f"draw {shot[1]}"] if shot else []
    return json.dumps([collection, task, entry.backbone, entry.weights_exact, head,
                       identity(config), *layer, *few], sort_keys=True)


def few_shot(split: Split, k: int, draw: int) -> list[str]:
    """k training images per class (all of a class that has fewer), drawn with a seed of
    the split's, k and the draw: the same images for every backbone and head."""
    ids, labels = split.select("train")
    rng = np.random.default_rng([split.spec.seed, k, draw])
    by_class: dict[str, list[str]] = {}
    for i, y in zip(ids, labels):
        by_class.setdefault(y, []).append(i)
    chosen = set()
    for members in by_class.values():
        chosen.update(rng.choice(members, size=min(k, len(members)), replace=False).tolist())
    return [i for i in ids if i in chosen]


def calibrated(pipeline, X_val: np.ndarray, y_val: np.ndarray, method: str):
    """The fitted ``pipeline`` with its probabilities recalibrated on the validation part
    (scikit-learn's ``CalibratedClassifierCV`` on the frozen pipeline: temperature
    scaling, isotonic regression or Platt's sigmoid)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    every = np.arange(len(y_val))  # one calibrator, fitted on the whole validation part
    return CalibratedClassifierCV(FrozenEstimator(pipeline), method=method,
                                  cv=[(every, every)]).fit(X_val, y_val)


def cell_inputs(entry: Concatenation, split: Split) -> dict:
    """What a cell is computed from: each feature file's content and the split's digest."""
    return {"features": entry.content, "split": split.digest}


def stale_reason(row: dict | None, inputs: dict) -> str | None:
    """Why a stored row no longer stands for its cell (None: it does)."""
    if row is None:
        return "not computed yet"
    was = row.get("inputs")
    if was is None:
        return "stored before featbank recorded what a cell was computed from"
    changed = [what for what, same in (
        ("features", was.get("features") == inputs["features"]),
        (f"the split of task {row['task']!r}", was.get("split") == inputs["split"])) if not same]
    if not changed:
        return None
    return f"{' and '.join(changed)} changed since the cell was trained"


def _cell_stem(task: str, entry: Concatenation, head: str, config: ClassifyConfig,
               inputs: dict, shot=None) -> str:
    key = [identity(config), inputs] + ([list(shot)] if shot else [])
    return f"{safe_name(task)}/{entry.stem}__{head}__{digest(key, 10)}"


def tested_ids(split: Split, entry: Concatenation, warn=None) -> tuple[list[str], list[str]]:
    """The test part's ids and labels, without the images a fine-tuned trunk behind
    ``entry`` trained or validated on; refused when none is left."""
    ids, labels = split.select("test")
    fit = entry.fit_ids
    if not fit:
        return ids, labels
    kept = [k for k, i in enumerate(ids) if i not in fit]
    if not kept:
        raise BadInput(f"every test image of task {split.task!r} ({split.spec.tag}) was used "
                       f"to fine-tune the trunk behind {entry.stem}; test it on another task "
                       "or split seed, or on images it never saw")
    if len(kept) < len(ids) and warn is not None:
        warn(f"{split.task} / {entry.backbone}: {len(ids) - len(kept)} of the {len(ids)} test "
             f"images were used to fine-tune its trunk; tested on the other {len(kept)}")
    return [ids[k] for k in kept], [labels[k] for k in kept]


def _rows(split: Split, part: str, index: dict[str, int], entry: Concatenation):
    ids, labels = tested_ids(split, entry) if part == "test" else split.select(part)
    keep = [k for k, i in enumerate(ids) if i in index]
    return np.array([index[ids[k]] for k in keep], dtype=int), np.array([labels[k] for k in keep])


def run_cell(*, folder: Path, collection: str, task: str, split: Split, entry: Concatenation,
             head: str, config: ClassifyConfig, shot: tuple[int, int] | None = None) -> dict:
    """Train one head on one feature file and task (with ``shot`` (k, draw): on k training
    images per class, :func:`few_shot`); returns its results row."""
    data = entry.read()
    X = data.X.astype(np.float32, copy=False)
    index = {image_id: k for k, image_id in enumerate(data.ids)}
    (tr, y_tr), (va, y_va), (te, y_te) = (_rows(split, p, index, entry)
                                          for p in ("train", "val", "test"))
    if shot:
        drawn = {index[i] for i in few_shot(split, *shot) if i in index}
        chosen = np.array([k for k, row in enumerate(tr) if row in drawn], dtype=int)
    else:
        chosen = subsample(y_tr, config.train_fraction, config.options.seed)
    tr, y_tr = tr[chosen], y_tr[chosen]
    if split.multi_label:  # 0/1 matrices, columns in split.classes order
        y_tr, y_va, y_te = (split.indicator(list(y)) for y in (y_tr, y_va, y_te))
    pipeline = make_head(head, config.options, multi_label=split.multi_label)
    start = time.perf_counter()
    tuning = fit_head(pipeline, X[tr], y_tr, X[va], y_va, grid=HEADS[head].grid_for(config.options))
    model = calibrated(pipeline, X[va], y_va, config.calibrate) if config.calibrate else pipeline
    seconds = time.perf_counter() - start
    classes = np.array(split.classes, dtype=object) if split.multi_label else pipeline.classes_
    val = metrics(y_va, class_scores(model, X[va]), classes)
    test_scores = class_scores(model, X[te])
    key = cell_key(collection, task, entry, head, config, shot)
    inputs = cell_inputs(entry, split)
    stem = _cell_stem(task, entry, head, config, inputs, shot)
    model.featbank_cell_ = {"cell": key, "inputs": inputs}  # what it was trained on
    head_path = _save(folder, stem, model, y_te, test_scores, classes,
                      reliability_title=f"{task} / {entry.backbone} / {head}: test reliability"
                      if config.reliability and not split.multi_label else None)
    test_ids = [data.ids[k] for k in te]
    test = metrics(y_te, test_scores, classes, ci=True, seed=split.spec.seed)
    paired = {"test_scores": save_test_scores(folder, f"reports/{stem}_test_scores.npz", test_ids,
                                              y_te, test_scores, classes, test, split.spec.seed,
                                              identity={"cell": key, "inputs": inputs})} \
        if split.multi_label else {}
    return result_row(
        collection=collection, backbone=entry.backbone, weights=entry.weights,
        weights_exact=entry.weights_exact, weights_label=entry.weights_label, task=task,
        method="off-the-shelf", head=head, test=test, val=val,
        n_train=len(tr), n_val=len(va), n_test=len(te), n_classes=len(classes),
        feature_dim=entry.feature_dim, n_params=n_parameters(pipeline), seconds=seconds,
        split_tag=split.spec.tag, test_ids=test_ids, **paired,
        test_hits=hits(y_te, test_scores, classes), cell=key, inputs=inputs,
        n_untested=sum(i in entry.fit_ids for i in split.select("test")[0]),
        split_group_by=split.spec.group_by, variant=config.variant,
        calibrate=config.calibrate, shots=shot[0] if shot else None,
        draw=shot[1] if shot else None,
        **{f"option_{k}": v for k, v in asdict(config.options).items()},
        train_fraction=config.train_fraction,
        tuned=tuning.chosen if tuning else None,
        head_engine=getattr(pipeline[-1], "engine_", None),
        head_settings=getattr(pipeline[-1], "settings_", None),
        tuning_val_scores=tuning.scores if tuning else None,
        head_path=str(head_path.relative_to(folder)),
        features=" + ".join(f"features/{p.path.name}" for p in entry.parts),
        **layer_fields(entry))


def _save(folder: Path, stem: str, model, y_te, test_scores, classes,
          reliability_title: str | None) -> Path:
    """The fitted head (``heads/<stem>.joblib``) and its test reports; returns the head's
    path."""
    head_path = folder / "heads" / f"{stem}.joblib"
    head_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(head_path) as tmp:
        joblib.dump(model, tmp)
    write_reports(folder / "reports" / stem, y_te, classes[test_scores.argmax(1)], classes,
                  test_scores)
    if reliability_title:
        plot_reliability(reliability(y_te, probabilities(test_scores), classes),
                         folder / "reports" / f"{stem}_reliability.png", title=reliability_title)
    return head_path


def layer_fields(entry: Concatenation) -> dict:
    """A row's ``layer``, ``layer_index`` and ``pool`` (docs/design.md, "The results store")."""
    return {"layer": entry.layer, "layer_index": entry.layer_index,
            "pool": "+".join(p.pool for p in entry.parts) if entry.layer_tag else "model"}


def task_splits(collection: Collection, tasks: str, spec: SplitSpec, folder: Path,
                warn=print, *, resplit: bool = False) -> dict[str, Split]:
    """Saved splits of the requested tasks; with ``all``, tasks that cannot be split are
    reported and left out (a named task that cannot be split is an error)."""
    names = [t for t in collection.tasks if t != spec.group_by] if tasks == "all" else \
        [t.strip() for t in tasks.split(",")]
    splits = {}
    for task in names:
        try:
            splits[task] = load_or_make_split(collection, task, spec, folder, resplit=resplit,
                                              warn=warn)
        except BadInput as err:
            if tasks != "all":
                raise
            warn(f"skipping {err}")
    if not splits:
        raise BadInput(f"no task of collection {collection.name!r} can be split "
                         f"({', '.join(collection.tasks)})")
    for task, split in splits.items():
        if split.dropped:
            warn(f"task {task}: {len(split.dropped)} classes with fewer than {spec.minimum} "
                 f"images left out ({sum(split.dropped.values())} images)")
    return splits
