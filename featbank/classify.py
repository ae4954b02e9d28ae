"""Off-the-shelf classification: every head x backbone x task on cached features.

A *cell* is one feature file (backbone x weights) x task x head, trained on the
task's saved split. Cells are independent: they run in parallel (joblib), each
one's row is appended to ``results.jsonl`` as it finishes, and cells already
in the store are reused (unless ``force``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import joblib
import numpy as np

from .cache import read_features, safe_name
from .collection import Collection
from .evaluate import append_result, load_results, metrics, write_reports
from .heads import HeadOptions, class_scores, fit_head, make_head, n_parameters, resolve_heads
from .tasks import Split, SplitSpec, load_or_make_split


@dataclass
class ClassifyConfig:
    heads: str = "all"
    backbones: str = "all"  # registry names, comma-separated, or all
    weights: str = "all"  # imagenet | random | sha256:... prefix | all
    tasks: str = "all"
    cache_root: str = "cache"
    split: SplitSpec = field(default_factory=SplitSpec)
    options: HeadOptions = field(default_factory=HeadOptions)
    train_fraction: float = 1.0
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    force: bool = False

    def __post_init__(self):
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"--train-fraction must be in (0, 1], not {self.train_fraction}")

    @property
    def variant(self) -> str:
        """What, besides the head, changes an off-the-shelf result."""
        o = self.options
        return (f"norm={o.normalize},pca={o.pca},balanced={o.balanced},"
                f"frac={self.train_fraction},seed={o.seed},softmax={o.softmax_recipe}")


@dataclass(frozen=True)
class FeatureEntry:
    path: Path
    backbone: str
    weights: str
    feature_dim: int
    n_rows: int


def feature_files(folder: Path, backbones: str = "all", weights: str = "all") -> list[FeatureEntry]:
    """The collection's feature files matching the backbone and weights filters."""
    import h5py

    entries = []
    for path in sorted((folder / "features").glob("*.h5")):
        with h5py.File(path, "r") as f:
            a = f.attrs
            entries.append(FeatureEntry(path, str(a["backbone"]), str(a["weights"]),
                                        int(a["feature_dim"]), int(f["ids"].shape[0])))
    if not entries:
        raise FileNotFoundError(f"no feature files in {folder / 'features'}; run extract.py first")
    wanted = {b.strip() for b in backbones.split(",")} - {"all"}
    known = sorted({e.backbone for e in entries})
    if wanted - set(known):
        raise ValueError(f"no features of {', '.join(sorted(wanted - set(known)))} for "
                         f"collection {folder.name!r}; it has {', '.join(known)} "
                         "(run extract.py --backbone ... first)")
    chosen = [e for e in entries if not wanted or e.backbone in wanted]
    if weights != "all":
        chosen = [e for e in chosen if e.weights == weights or e.weights.startswith(weights)]
        if not chosen:
            raise ValueError(f"no features with weights {weights!r}; found "
                             f"{', '.join(sorted({e.weights for e in entries}))}")
    return chosen


def subsample(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified ``fraction`` of the rows, at least one per class (pure)."""
    if fraction >= 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        keep.append(rng.choice(rows, size=max(1, round(len(rows) * fraction)), replace=False))
    return np.sort(np.concatenate(keep))


def ids_digest(ids) -> str:
    """Fingerprint of a set of image ids: equal digests, identical evaluation sets."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def cell_key(collection: str, task: str, entry: FeatureEntry, head: str, variant: str,
             split_tag: str) -> str:
    return json.dumps([collection, task, entry.backbone, entry.weights, entry.n_rows, head,
                       variant, split_tag])


def _cell_stem(task: str, entry: FeatureEntry, head: str, variant: str) -> str:
    digest = hashlib.sha256(variant.encode()).hexdigest()[:8]
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
    fit_head(pipeline, X[tr], y_tr, X[va], y_va)
    seconds = time.perf_counter() - start
    classes = pipeline.classes_
    val = metrics(y_va, class_scores(pipeline, X[va]), classes)
    test_scores = class_scores(pipeline, X[te])
    test = metrics(y_te, test_scores, classes)
    stem = _cell_stem(task, entry, head, config.variant)
    head_path = folder / "heads" / f"{stem}.joblib"
    head_path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, head_path)
    write_reports(folder / "reports" / stem, y_te, classes[test_scores.argmax(1)], classes)
    return {"collection": collection, "backbone": entry.backbone, "weights": entry.weights,
            "task": task, "method": "off-the-shelf", "head": head, "split": "test", **test,
            **{f"val_{k}": v for k, v in val.items()},
            "n_train": int(len(tr)), "n_val": int(len(va)), "n_test": int(len(te)),
            "n_classes": int(len(classes)), "feature_dim": entry.feature_dim,
            "n_params": n_parameters(pipeline), "seconds": round(seconds, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "variant": config.variant, **{f"option_{k}": v for k, v in asdict(config.options).items()},
            "train_fraction": config.train_fraction, "split_tag": split.spec.tag,
            "test_ids_sha256": ids_digest(data.ids[k] for k in te),
            "head_path": str(head_path), "features": str(entry.path),
            "cell": cell_key(collection, task, entry, head, config.variant, split.spec.tag)}


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
    entries = feature_files(folder, config.backbones, config.weights)
    splits = task_splits(collection, config.tasks, config.split, folder, warn=warn)
    done = {r.get("cell") for r in load_results(folder)}
    todo = [(task, entry, head) for task in splits for entry in entries for head in heads
            if config.force or cell_key(collection.name, task, entry, head, config.variant,
                                        config.split.tag) not in done]
    if len(todo) < len(splits) * len(entries) * len(heads):
        warn(f"reusing {len(splits) * len(entries) * len(heads) - len(todo)} cells already "
             "in results.jsonl (--force to recompute)")
    jobs = joblib.Parallel(n_jobs=min(config.jobs, max(1, len(todo))),
                           return_as="generator_unordered")
    new = []
    for row in jobs(joblib.delayed(run_cell)(folder=folder, collection=collection.name, task=t,
                                             split=splits[t], entry=e, head=h, config=config)
                    for t, e, h in todo):
        append_result(folder, row)
        new.append(row)
        warn(f"{row['task']} / {row['backbone']} / {row['head']}: test top-1 {row['top1']:.3f} "
             f"({row['seconds']:.1f} s)")
    return new
