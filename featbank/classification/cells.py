"""One cell of the off-the-shelf grid: a head trained on a feature file (or a concatenation)
for one task, on the task's saved split; its identity, its row and its files.
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
from featbank.evaluation.metrics import hits, metrics
from featbank.evaluation.reports import result_row, save_test_scores, write_reports
from featbank.heads.registry import HEADS, class_scores, fit_head, make_head, n_parameters
from featbank.store.features import Concatenation


def cell_key(collection: str, task: str, entry: Concatenation, head: str,
             config: ClassifyConfig) -> str:
    """A cell's identity: what decides its result, every identity field of the config included
    (and the layer, for a file of another than the trunk's output)."""
    layer = [entry.layer_tag] if entry.layer_tag else []
    return json.dumps([collection, task, entry.backbone, entry.weights_exact, entry.n_rows, head,
                       identity(config), *layer], sort_keys=True)


def _cell_stem(task: str, entry: Concatenation, head: str, config: ClassifyConfig) -> str:
    return f"{safe_name(task)}/{entry.stem}__{head}__{digest(identity(config), 8)}"


def _rows(split: Split, part: str, index: dict[str, int]):
    ids, labels = split.select(part)
    keep = [k for k, i in enumerate(ids) if i in index]
    return np.array([index[ids[k]] for k in keep], dtype=int), np.array([labels[k] for k in keep])


def run_cell(*, folder: Path, collection: str, task: str, split: Split, entry: Concatenation,
             head: str, config: ClassifyConfig) -> dict:
    """Train one head on one feature file and task; returns its results row."""
    data = entry.read()
    X = data.X.astype(np.float32, copy=False)
    index = {image_id: k for k, image_id in enumerate(data.ids)}
    (tr, y_tr), (va, y_va), (te, y_te) = (_rows(split, p, index) for p in ("train", "val", "test"))
    chosen = subsample(y_tr, config.train_fraction, config.options.seed)
    tr, y_tr = tr[chosen], y_tr[chosen]
    if split.multi_label:  # 0/1 matrices, columns in split.classes order
        y_tr, y_va, y_te = (split.indicator(list(y)) for y in (y_tr, y_va, y_te))
    pipeline = make_head(head, config.options, multi_label=split.multi_label)
    start = time.perf_counter()
    tuning = fit_head(pipeline, X[tr], y_tr, X[va], y_va, grid=HEADS[head].grid_for(config.options))
    seconds = time.perf_counter() - start
    classes = np.array(split.classes, dtype=object) if split.multi_label else pipeline.classes_
    val = metrics(y_va, class_scores(pipeline, X[va]), classes)
    test_scores = class_scores(pipeline, X[te])
    stem = _cell_stem(task, entry, head, config)
    head_path = folder / "heads" / f"{stem}.joblib"
    head_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(head_path) as tmp:
        joblib.dump(pipeline, tmp)
    write_reports(folder / "reports" / stem, y_te, classes[test_scores.argmax(1)], classes,
                  test_scores)
    test_ids = [data.ids[k] for k in te]
    test = metrics(y_te, test_scores, classes, ci=True, seed=split.spec.seed)
    paired = {"test_scores": save_test_scores(folder, f"reports/{stem}_test_scores.npz", test_ids,
                                              y_te, test_scores, classes, test, split.spec.seed)} \
        if split.multi_label else {}
    return result_row(
        collection=collection, backbone=entry.backbone, weights=entry.weights,
        weights_exact=entry.weights_exact, weights_label=entry.weights_label, task=task,
        method="off-the-shelf", head=head, test=test, val=val,
        n_train=len(tr), n_val=len(va), n_test=len(te), n_classes=len(classes),
        feature_dim=entry.feature_dim, n_params=n_parameters(pipeline), seconds=seconds,
        split_tag=split.spec.tag, test_ids=test_ids, **paired,
        test_hits=hits(y_te, test_scores, classes), cell=cell_key(collection, task, entry, head, config),
        split_group_by=split.spec.group_by, variant=config.variant,
        **{f"option_{k}": v for k, v in asdict(config.options).items()},
        train_fraction=config.train_fraction,
        tuned=tuning.chosen if tuning else None,
        head_engine=getattr(pipeline[-1], "engine_", None),
        head_settings=getattr(pipeline[-1], "settings_", None),
        tuning_val_scores=tuning.scores if tuning else None,
        head_path=str(head_path.relative_to(folder)),
        features=" + ".join(f"features/{p.path.name}" for p in entry.parts),
        **layer_fields(entry))


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
        except ValueError as err:
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
