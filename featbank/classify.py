"""Off-the-shelf classification: every head x backbone x task on cached features.

A *cell* is one feature file (backbone x weights) x task x head, trained on the
task's saved split. Cells are independent: they run in parallel (joblib), each
one's row is appended to ``results.jsonl`` as it finishes, and cells already
in the store are reused (unless ``force``).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import joblib
import numpy as np

from .cache import FeatureEntry, feature_files, read_features, safe_name
from .collection import Collection
from .config import ClassifyConfig, identity
from .evaluate import append_result, load_results, metrics, result_row, write_reports
from .fileio import atomic_path
from .heads import HEADS, class_scores, fit_head, make_head, n_parameters, resolve_heads
from .tasks import Split, SplitSpec, load_or_make_split, subsample

__all__ = ["ClassifyConfig", "classify", "cell_key", "run_cell", "task_splits"]


def cell_key(collection: str, task: str, entry: FeatureEntry, head: str,
             config: ClassifyConfig) -> str:
    """A cell's identity: what decides its result, every identity field of the config included."""
    return json.dumps([collection, task, entry.backbone, entry.weights_exact, entry.n_rows, head,
                       identity(config)], sort_keys=True)


def _cell_stem(task: str, entry: FeatureEntry, head: str, config: ClassifyConfig) -> str:
    digest = hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:8]
    return f"{safe_name(task)}/{entry.path.stem}__{head}__{digest}"


def _rows(split: Split, part: str, index: dict[str, int]):
    ids, labels = split.select(part)
    keep = [k for k, i in enumerate(ids) if i in index]
    return np.array([index[ids[k]] for k in keep], dtype=int), np.array([labels[k] for k in keep])


def run_cell(*, folder: Path, collection: str, task: str, split: Split, entry: FeatureEntry,
             head: str, config: ClassifyConfig) -> dict:
    """Train one head on one feature file and task; returns its results row."""
    data = read_features(entry.path)
    X = data.features.astype(np.float32, copy=False)
    index = {image_id: k for k, image_id in enumerate(data.ids)}
    (tr, y_tr), (va, y_va), (te, y_te) = (_rows(split, p, index) for p in ("train", "val", "test"))
    chosen = subsample(y_tr, config.train_fraction, config.options.seed)
    tr, y_tr = tr[chosen], y_tr[chosen]
    pipeline = make_head(head, config.options)
    start = time.perf_counter()
    tuning = fit_head(pipeline, X[tr], y_tr, X[va], y_va, grid=HEADS[head].grid)
    seconds = time.perf_counter() - start
    classes = pipeline.classes_
    val = metrics(y_va, class_scores(pipeline, X[va]), classes)
    test_scores = class_scores(pipeline, X[te])
    stem = _cell_stem(task, entry, head, config)
    head_path = folder / "heads" / f"{stem}.joblib"
    head_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(head_path) as tmp:
        joblib.dump(pipeline, tmp)
    write_reports(folder / "reports" / stem, y_te, classes[test_scores.argmax(1)], classes)
    return result_row(
        collection=collection, backbone=entry.backbone, weights=entry.weights,
        weights_exact=entry.weights_exact, task=task, method="off-the-shelf", head=head,
        test=metrics(y_te, test_scores, classes), val=val, n_train=len(tr), n_val=len(va),
        n_test=len(te), n_classes=len(classes), feature_dim=entry.feature_dim,
        n_params=n_parameters(pipeline), seconds=seconds, split_tag=split.spec.tag,
        test_ids=[data.ids[k] for k in te], cell=cell_key(collection, task, entry, head, config),
        variant=config.variant, **{f"option_{k}": v for k, v in asdict(config.options).items()},
        train_fraction=config.train_fraction,
        tuned=tuning.chosen if tuning else None,
        tuning_val_scores=tuning.scores if tuning else None,
        head_path=str(head_path), features=str(entry.path))


def task_splits(collection: Collection, tasks: str, spec: SplitSpec, folder: Path,
                warn=print) -> dict[str, Split]:
    """Saved splits of the requested tasks; with ``all``, tasks that cannot be split are
    reported and left out (a named task that cannot be split is an error)."""
    names = collection.tasks if tasks == "all" else [t.strip() for t in tasks.split(",")]
    splits = {}
    for task in names:
        try:
            splits[task] = load_or_make_split(collection, task, spec, folder)
        except ValueError as err:
            if tasks != "all":
                raise
            warn(f"skipping {err}")
    if not splits:
        raise ValueError(f"no task of collection {collection.name!r} can be split "
                         f"({', '.join(collection.tasks)})")
    for task, split in splits.items():
        if split.dropped:
            warn(f"task {task}: {len(split.dropped)} classes with fewer than {spec.minimum} "
                 f"images left out ({sum(split.dropped.values())} images)")
    return splits


def classify(collection: Collection, config: ClassifyConfig, *, warn=print) -> list[dict]:
    """Fill the grid; returns the rows computed by this call (reused cells excluded)."""
    heads = resolve_heads(config.heads)
    folder = Path(config.cache_root) / collection.name
    entries = feature_files(folder, config.backbones, config.weights, warn=warn)
    splits = task_splits(collection, config.tasks, config.split, folder, warn=warn)
    done = {r.get("cell") for r in load_results(folder)}
    todo = [(task, entry, head) for task in splits for entry in entries for head in heads
            if config.force or cell_key(collection.name, task, entry, head, config) not in done]
    if len(todo) < len(splits) * len(entries) * len(heads):
        warn(f"reusing {len(splits) * len(entries) * len(heads) - len(todo)} cells already "
             "in results.jsonl (--force to recompute)")
    jobs = joblib.Parallel(n_jobs=min(config.jobs, max(1, len(todo))),
                           return_as="generator_unordered")
    new = []
    for row in jobs(joblib.delayed(run_cell)(folder=folder, collection=collection.name, task=t,
                                             split=splits[t], entry=e, head=h, config=config)
                    for t, e, h in todo):
        if not append_result(folder, row, replace=config.force):
            warn(f"{row['task']} / {row['backbone']} / {row['head']}: another run stored this "
                 "cell meanwhile; its row is kept")
            continue
        new.append(row)
        warn(f"{row['task']} / {row['backbone']} / {row['head']}: test top-1 {row['top1']:.3f} "
             f"({row['seconds']:.1f} s)")
    return new
