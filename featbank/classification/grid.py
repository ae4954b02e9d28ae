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
from scipy.special import expit

from featbank.store.features import Features, Concatenation, select_features
from featbank.core.fileio import safe_name
from featbank.data.collection import Collection
from featbank.classification.config import ClassifyConfig
from featbank.core.settings import identity
from featbank.store.results import append_result, latest_rows, load_results
from featbank.evaluation.metrics import hits, metrics, score_of
from featbank.evaluation.reports import result_row, save_test_scores, write_reports
from featbank.core.fileio import atomic_path
from featbank.models.registry import parse_selection
from featbank.heads.registry import HEADS, class_scores, fit_head, make_head, n_parameters, resolve_heads
from featbank.data.tasks import Split, SplitSpec, load_or_make_split, subsample

__all__ = ["ClassifyConfig", "classify", "cell_key", "ensemble_key", "run_cell", "run_ensemble",
           "task_splits"]


def cell_key(collection: str, task: str, entry: Concatenation, head: str,
             config: ClassifyConfig) -> str:
    """A cell's identity: what decides its result, every identity field of the config included."""
    return json.dumps([collection, task, entry.backbone, entry.weights_exact, entry.n_rows, head,
                       identity(config)], sort_keys=True)


def _cell_stem(task: str, entry: Concatenation, head: str, config: ClassifyConfig) -> str:
    digest = hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:8]
    return f"{safe_name(task)}/{entry.stem}__{head}__{digest}"


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
        head_path=str(head_path), features=entry.paths)


def task_splits(collection: Collection, tasks: str, spec: SplitSpec, folder: Path,
                warn=print) -> dict[str, Split]:
    """Saved splits of the requested tasks; with ``all``, tasks that cannot be split are
    reported and left out (a named task that cannot be split is an error)."""
    names = [t for t in collection.tasks if t != spec.group_by] if tasks == "all" else \
        [t.strip() for t in tasks.split(",")]
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
    """Fill the grid, on each of ``config.repeats`` seeded splits; returns the rows computed
    by this call (reused cells excluded)."""
    new = []
    for repeat in config.repeated():
        if config.repeats > 1:
            warn(f"repeat with seed {repeat.split.seed} (split {repeat.split.tag})")
        new += _classify_once(collection, repeat, warn=warn)
    return new


def _classify_once(collection: Collection, config: ClassifyConfig, *, warn) -> list[dict]:
    heads = resolve_heads(config.heads)
    folder = Path(config.cache_root) / collection.name
    entries = select_features(folder, parse_selection(config.backbones), config.weights,
                              warn=warn)
    if config.ensemble and len(entries) < 2:
        raise ValueError(f"--ensemble needs at least two feature sources, found "
                         f"{len(entries)}; name them, e.g. --backbone resnet50,vgg19 or "
                         "squeezenet1_1@imagenet,squeezenet1_1@random")
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
    if config.ensemble:
        new += _ensembles(folder, collection.name, splits, entries, heads, config, warn)
    return new


# -- ensembles: one head's probabilities averaged across feature sources ------------------

def ensemble_key(collection: str, task: str, entries: list[Concatenation], head: str,
                 config: ClassifyConfig) -> str:
    return json.dumps(["ensemble", *(json.loads(cell_key(collection, task, e, head, config))
                                     for e in entries)], sort_keys=True)


def _ensembles(folder: Path, collection: str, splits: dict[str, Split],
               entries: list[Concatenation], heads: list[str], config: ClassifyConfig,
               warn) -> list[dict]:
    """An ensemble row per task x head, from the member cells already in the store."""
    stored = {r.get("cell"): r for r in latest_rows(load_results(folder))}
    sets: list = []  # the members' features, read once for every task and head
    new = []
    for task, head in ((t, h) for t in splits for h in heads):
        key = ensemble_key(collection, task, entries, head, config)
        if key in stored and not config.force:
            continue
        members = [stored.get(cell_key(collection, task, e, head, config)) for e in entries]
        if None in members or not all(Path(m["head_path"]).is_file() for m in members):
            raise FileNotFoundError(f"a member of the {task} / {head} ensemble has no stored "
                                    "head; run classify.py again with --force")
        sets = sets or [e.read() for e in entries]
        row = run_ensemble(collection=collection, task=task, split=splits[task],
                           entries=entries, sets=sets, members=members, head=head,
                           config=config, key=key, folder=folder)
        if append_result(folder, row, replace=config.force):
            new.append(row)
            metric, value, _ = score_of(row)
            warn(f"{task} / {row['backbone']} / {head} ensemble: test {metric} {value:.3f} "
                 f"(members: {', '.join(format(score_of(m)[1], '.3f') for m in members)})")
    return new


def run_ensemble(*, collection: str, task: str, split: Split, entries: list[Concatenation],
                 sets: list[Features], members: list[dict], head: str,
                 config: ClassifyConfig, key: str, folder: Path) -> dict:
    """Average the fitted member heads' class probabilities on the ids every member has.

    sets : each entry's features (``entry.read()``), read once by the caller for
    every task and head. Heads without probabilities (svm) contribute the
    softmax of their decision scores, or for a multi-label task (one binary
    head per label) their sigmoid. Returns the ensemble's results row.
    """
    start = time.perf_counter()
    models = []
    for data, member in zip(sets, members):
        models.append((joblib.load(member["head_path"]), data.X,
                       {image_id: k for k, image_id in enumerate(data.ids)}))
    if split.multi_label:  # every member's columns follow split.classes
        classes = np.array(split.classes, dtype=object)
    else:
        classes = np.array(sorted(set().union(*(m[0].classes_ for m in models))), dtype=object)

    def averaged(part: str):
        ids, labels = split.select(part)
        keep = [k for k, i in enumerate(ids) if all(i in index for _, _, index in models)]
        total = np.zeros((len(keep), len(classes)))
        for pipeline, features, index in models:
            rows = [index[ids[k]] for k in keep]
            columns = slice(None) if split.multi_label else \
                np.searchsorted(classes, pipeline.classes_)
            total[:, columns] += _probabilities(pipeline, features[rows], split.multi_label)
        labels = [labels[k] for k in keep]
        truth = split.indicator(labels) if split.multi_label else np.array(labels)
        return [ids[k] for k in keep], truth, total / len(models)

    _, y_va, p_va = averaged("val")
    test_ids, y_te, p_te = averaged("test")
    seconds = sum(m["seconds"] for m in members) + time.perf_counter() - start
    scores = "probabilities" if all(hasattr(m[0], "predict_proba") for m in models) else \
        (f"{'sigmoid' if split.multi_label else 'softmax'} of decision scores where a head "
         "has no probabilities")
    test = metrics(y_te, p_te, classes, ci=True, seed=split.spec.seed)
    paired = {}
    if split.multi_label:
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        paired["test_scores"] = save_test_scores(
            folder, f"reports/{safe_name(task)}/ensemble__{head}__{digest}_test_scores.npz",
            test_ids, y_te, p_te, classes, test, split.spec.seed)
    return result_row(
        collection=collection, backbone="+".join(e.backbone for e in entries),
        weights="+".join(e.weights for e in entries),
        weights_exact="+".join(e.weights_exact for e in entries),
        weights_label=" + ".join(e.weights_label for e in entries), task=task, method="ensemble",
        head=head, test=test, val=metrics(y_va, p_va, classes),
        n_train=max(m["n_train"] for m in members), n_val=len(y_va), n_test=len(y_te),
        n_classes=len(classes), feature_dim=sum(e.feature_dim for e in entries),
        n_params=sum(m["n_params"] for m in members), seconds=seconds,
        split_tag=split.spec.tag, test_ids=test_ids, test_hits=hits(y_te, p_te, classes),
        cell=key, variant=config.variant, **paired,
        members=[{"backbone": m["backbone"], "weights": m["weights"],
                  score_of(m)[0]: score_of(m)[1]} for m in members],
        member_top1=[m["top1"] for m in members], ensemble_scores=scores,
        features=" | ".join(e.paths for e in entries))


def _probabilities(pipeline, X, multi_label: bool = False) -> np.ndarray:
    """Class probabilities, or where the head has none the softmax of its decision scores
    (for a multi-label head, each label's sigmoid: the labels are separate problems)."""
    if hasattr(pipeline, "predict_proba"):
        return pipeline.predict_proba(X)
    scores = class_scores(pipeline, X)
    if multi_label:
        return expit(scores)
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True)
