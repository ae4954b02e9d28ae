"""Likely cataloguing errors: images whose label the features argue against.

Confident learning (Northcutt et al., 2021) on out-of-fold probabilities: a
featbank head (logreg by default, its parameter chosen on the saved split's
validation part) is fitted K times over train+val, each fold's images
scored by the fit that never saw them, and the test part by a fit on all of
train+val, so no image is scored by a model trained on its own label.
cleanlab ranks them (``cleanlab.rank.get_label_quality_scores``, self-
confidence: the probability of the given label) and flags the likely issues
(``cleanlab.filter.find_label_issues``); a multi-label task goes through
cleanlab's multi-label functions, with the labels likely missing or wrong.

Outputs under ``<cache>/<collection>/analysis/label-issues/``: a CSV of every
image worst first (``id, given, suggested, score``, its part and whether it
is flagged), a contact sheet of the worst, an HTML page of the worst (the
flagged marked) and the JSON report. Needs cleanlab (``pip install 'featbank[quality]'``).
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from featbank.analysis.common import (
    describe,
    output_folder,
    read_entry,
    settings_of,
    sheet_rows,
    single_feature_file,
    thumbnail,
    thumbnail_files,
    write_page,
)
from featbank.analysis.config import LabelIssuesConfig
from featbank.analysis.duplicates import finish
from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path, safe_name
from featbank.data.collection import Collection
from featbank.data.saved_splits import load_or_make_split
from featbank.evaluation.plots import plot_image_grid

ON_PAGE = 1000  # the worst images on the HTML page (the CSV has every image)
PER_PAGE = 60


def cleanlab_module():
    try:
        import cleanlab
    except ImportError:
        raise BadInput("label-issues needs cleanlab: pip install 'featbank[quality]' "
                       "(or pip install cleanlab)") from None
    return cleanlab


def label_issues(collection: Collection, config: LabelIssuesConfig, *, warn=print) -> dict:
    """Rank every labelled image of ``config.task`` by how likely its label is wrong;
    writes CSV, PNG, HTML and JSON, returns the JSON report (``rows``: the CSV's)."""
    cleanlab_module()
    started = time.perf_counter()
    entry = single_feature_file(config.cache_root, collection.name, config.backbone,
                                config.weights, warn=warn)
    split = load_or_make_split(collection, config.task, config.split,
                               Path(config.cache_root) / collection.name, warn=warn)
    data = read_entry(entry)
    row = {image_id: k for k, image_id in enumerate(data.ids)}
    kept = [k for k, image_id in enumerate(split.ids) if image_id in row]
    if not kept:
        raise BadInput(f"task {config.task!r}: no image of its split has features in "
                       f"{entry.path.name}; run extract.py first")
    ids = [split.ids[k] for k in kept]
    given = [split.labels[k] for k in kept]
    parts = np.array([split.parts[k] for k in kept])
    X = data.X[[row[i] for i in ids]]
    classes = split.classes
    y = (split.indicator(given) if split.multi_label
         else np.array([classes.index(v) for v in given]))
    probs = out_of_fold(X, y, parts, config.head, config.folds, config.split.seed)
    rank = _multi_label if split.multi_label else _single_label
    rows = rank(ids, given, parts, y, probs, classes, split.separator)
    rows.sort(key=lambda r: (r["score"], r["id"]))
    folder = output_folder(config.cache_root, collection.name, "label-issues")
    stem = f"{safe_name(config.task)}__{split.spec.tag}__{entry.path.stem}__{config.head}"
    flagged = [r for r in rows if r["issue"]]
    report = {"command": "label-issues", "collection": collection.name, "task": config.task,
              **describe(entry), "split_tag": split.spec.tag, "split_digest": split.digest,
              "multi_label": split.multi_label, "head": config.head, "folds": config.folds,
              "n_images": len(rows), "n_issues": len(flagged),
              "out_of_fold_accuracy": _accuracy(y, probs, split.multi_label),
              "csv": str(_write_csv(folder / f"{stem}.csv", rows)), "settings": settings_of(config)}
    if rows and config.sheet:
        report["png"] = str(_sheet(folder / f"{stem}_worst.png", collection, rows[:config.sheet],
                                   config.task))
    if rows:
        report["html"] = str(_html(folder / f"{stem}.html", collection, rows[:ON_PAGE], report))
    report = finish(report, folder / f"{stem}.json", started)
    report["rows"] = rows
    return report


def out_of_fold(X: np.ndarray, y: np.ndarray, parts: np.ndarray, head: str, folds: int,
                seed: int) -> np.ndarray:
    """(n, classes) probabilities, each row from a fit that never saw it: K folds over
    train+val, the test part from a fit on train+val. ``y``: class indices, or a 0/1
    matrix (multi-label). The head's parameter is chosen once, train against val."""
    from featbank.heads.registry import HEADS, HeadOptions, fit_head, make_head

    multi_label = y.ndim == 2
    options = HeadOptions(seed=seed)
    train, val = parts == "train", parts == "val"
    tuning = fit_head(make_head(head, options, multi_label=multi_label), X[train], y[train],
                      X[val], y[val], grid=HEADS[head].grid_for(options))
    prefix = "head__estimator__" if multi_label else "head__"
    chosen = {prefix + k: v for k, v in (tuning.chosen if tuning else {}).items()}
    n_classes = y.shape[1] if multi_label else int(y.max()) + 1

    def scored(fit_rows: np.ndarray, score_rows: np.ndarray) -> np.ndarray:
        pipeline = make_head(head, options, multi_label=multi_label).set_params(**chosen)
        pipeline.fit(X[fit_rows], y[fit_rows])
        if not hasattr(pipeline, "predict_proba"):
            raise BadInput(f"--head {head} gives no probabilities; use logreg, softmax, rf "
                           "or knn")
        p = pipeline.predict_proba(X[score_rows])
        if multi_label:
            return p
        out = np.zeros((len(score_rows), n_classes))
        out[:, pipeline.classes_.astype(int)] = p  # a fold may miss a rare class
        return out

    probs = np.zeros((len(X), n_classes))
    pool = np.flatnonzero(~(parts == "test"))
    for fit_rows, score_rows in _folds(y[pool], folds, seed, multi_label):
        probs[pool[score_rows]] = scored(pool[fit_rows], pool[score_rows])
    test = np.flatnonzero(parts == "test")
    if len(test):
        probs[test] = scored(pool, test)
    return probs


def _folds(y: np.ndarray, folds: int, seed: int, multi_label: bool):
    from sklearn.model_selection import KFold, StratifiedKFold

    if multi_label:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        return MultilabelStratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)
    smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
    if smallest >= folds:
        return StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)
    return KFold(folds, shuffle=True, random_state=seed).split(y)


def _single_label(ids, given, parts, y, probs, classes, _separator) -> list[dict]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    scores = get_label_quality_scores(y, probs)
    issues = find_label_issues(y, probs)
    suggested = probs.argmax(axis=1)
    confidence = probs.max(axis=1)  # in the suggested label, whatever the given one
    return [{"id": i, "given": g, "suggested": classes[s], "score": round(float(q), 6),
             "part": str(p), "issue": bool(flag), "confidence": round(float(c), 6)}
            for i, g, s, q, p, flag, c in zip(ids, given, suggested, scores, parts, issues,
                                              confidence)]


def _multi_label(ids, given, parts, Y, probs, classes, separator) -> list[dict]:
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    label_lists = [list(np.flatnonzero(row)) for row in Y]
    scores = get_label_quality_scores(label_lists, probs)
    issues = find_label_issues(label_lists, probs)
    predicted = probs >= 0.5
    join = lambda mask: separator.join(c for c, m in zip(classes, mask) if m)  # noqa: E731
    return [{"id": i, "given": g, "suggested": join(pred), "score": round(float(q), 6),
             "part": str(p), "issue": bool(flag), "likely_missing": join(pred & (row == 0)),
             "likely_wrong": join(~pred & (row == 1))}
            for i, g, pred, row, q, p, flag in zip(ids, given, predicted, Y, scores, parts,
                                                   issues)]


def _accuracy(y: np.ndarray, probs: np.ndarray, multi_label: bool) -> float:
    if multi_label:
        return float(((probs >= 0.5) == (y == 1)).all(axis=1).mean())
    return float((probs.argmax(axis=1) == y).mean())


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows({**r, "issue": int(r["issue"])} for r in rows)
    return path


def _sheet(path: Path, collection: Collection, rows: list[dict], task: str) -> Path:
    cells = [(np.asarray(thumbnail(collection.path(r["id"]))),
              f"{r['given'][:12]} > {r['suggested'][:12]}\n{r['score']:.3f}") for r in rows]
    shown = sheet_rows(cells)
    return plot_image_grid(shown, path, cell=1.6,
                           title=f"likely label issues of {task}: given > suggested, score")


def _html(path: Path, collection: Collection, rows: list[dict], report: dict) -> Path:
    thumbs = thumbnail_files({r["id"]: collection.path(r["id"]) for r in rows}, path.parent)
    return write_page(path, "label_issues.html.j2",
                      title=f"Likely label issues: {report['collection']}, {report['task']}",
                      collection=report["collection"], task=report["task"],
                      backbone=report["backbone"], head=report["head"],
                      n_images=report["n_images"], n_issues=report["n_issues"],
                      per_page=PER_PAGE, rows=[{**r, "thumb": thumbs[r["id"]]} for r in rows])

