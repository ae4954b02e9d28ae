"""Outliers, and which images to annotate first.

``outliers``: each image's score is its mean cosine distance to its ``k``
nearest neighbours in the feature file's similarity index (the k-NN
distance of Ramaswamy et al., 2000): blank scans, colour charts, a stray
object among paintings come first.

``select``: a diverse, representative set of ``n`` images to label first, by
k-center greedy (Sener & Savarese, 2018, "core-set" selection): starting from
the images already labelled (``labelled``) or else from the one nearest the
collection's mean, each pick is the image farthest, by cosine distance, from
every image picked so far, so that every image ends near a picked one. The
report gives the covering radius after each pick (the largest distance of
any image to its nearest pick).

Outputs under ``<cache>/<collection>/analysis/<outliers|select>/``: a CSV
ranked, a contact sheet of the first, and the JSON report.
"""
from __future__ import annotations

import csv
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from featbank.analysis.common import (
    describe,
    output_folder,
    read_entry,
    sheet_rows,
    single_feature_file,
    thumbnail,
)
from featbank.analysis.config import OutliersConfig
from featbank.analysis.duplicates import finish
from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path
from featbank.data.collection import Collection
from featbank.evaluation.plots import plot_image_grid
from featbank.store.index import ensure_index, search


def outlier_scores(index, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(score, nearest row) of every row of ``X``: its mean cosine distance to its ``k``
    nearest other indexed rows, and the nearest of them."""
    found, similarity = search(index, X, min(k + 1, index.ntotal))
    own = found == np.arange(len(X))[:, None]
    # drop each row's own entry (or, for an exact copy ranked before it, the last one)
    drop = np.where(own.any(axis=1), own.argmax(axis=1), found.shape[1] - 1)
    keep = np.ones(found.shape, bool)
    keep[np.arange(len(X)), drop] = False
    found = found[keep].reshape(len(X), -1)
    similarity = similarity[keep].reshape(len(X), -1)
    return 1.0 - similarity.mean(axis=1), found[:, 0]


def k_center_greedy(X: np.ndarray, n: int, *, start: list[int] | None = None
                    ) -> tuple[list[int], list[float]]:
    """Rows of ``n`` picks and the covering radius after each (cosine distance).

    X : (rows, dim); start : rows already labelled (default: the row nearest the
    mean). Each pick is the row farthest from its nearest pick so far.

    Examples
    --------
    >>> X = np.array([[1, 0], [0.99, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    >>> k_center_greedy(X, 3)[0]
    [1, 3, 2]
    """
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    if start:
        nearest, picks = (1 - X @ X[start].T).min(axis=1), []
    else:  # the most central image is the first pick
        first = int(np.argmax(X @ X.mean(axis=0)))
        nearest, picks = 1 - X @ X[first], [first]
    radius = [float(max(nearest.max(), 0.0))] if picks else []
    while len(picks) < min(n, len(X)):
        pick = int(np.argmax(nearest))
        if nearest[pick] <= 1e-6:
            break  # every image is picked, labelled or a copy of one
        picks.append(pick)
        nearest = np.minimum(nearest, 1 - X @ X[pick])
        radius.append(float(max(nearest.max(), 0.0)))
    return picks, radius


def outliers(collection: Collection, config: OutliersConfig, *, warn=print) -> dict:
    """``outliers`` (``config.n`` None) or ``select`` (pick ``config.n``); writes CSV,
    PNG and JSON, returns the JSON report (``rows``: the CSV's rows)."""
    started = time.perf_counter()
    entry = single_feature_file(config.cache_root, collection.name, config.backbone,
                                config.weights, warn=warn)
    data = read_entry(entry)
    if len(data.ids) < 2:
        raise BadInput(f"{entry.path.name} holds {len(data.ids)} image; outliers and select "
                       "need at least two")
    index, _ = ensure_index(entry.path, warn=warn)
    score, nearest = outlier_scores(index, data.X, config.k)
    command = "outliers" if config.n is None else "select"
    if config.n is None:
        order = np.argsort(-score, kind="stable")
        rows = [{"rank": r + 1, "id": data.ids[k], "score": round(float(score[k]), 6),
                 "nearest": data.ids[nearest[k]]} for r, k in enumerate(order)]
        extra = {"k": config.k, "score_median": float(np.median(score))}
    else:
        start = _labelled_rows(config.labelled, data.ids, warn)
        picks, radius = k_center_greedy(data.X, config.n, start=start)
        rows = [{"rank": r + 1, "id": data.ids[k], "radius_after": round(radius[r], 6),
                 "outlier_score": round(float(score[k]), 6)} for r, k in enumerate(picks)]
        extra = {"n": config.n, "n_picked": len(picks), "n_labelled": len(start or []),
                 "radius": radius[-1] if radius else None}
    folder = output_folder(config.cache_root, collection.name, command)
    stem = entry.path.stem + ("" if config.n is None else f"__n{config.n}")
    report = {"command": command, "collection": collection.name, **describe(entry),
              "n_images": len(data.ids), **extra,
              "csv": str(_write_csv(folder / f"{stem}.csv", rows)), "settings": asdict(config)}
    if rows and config.sheet:
        report["png"] = str(_sheet(folder / f"{stem}_sheet.png", collection,
                                   rows[:config.sheet], command))
    report = finish(report, folder / f"{stem}.json", started)
    report["rows"] = rows
    return report


def _labelled_rows(path: str | None, ids: list[str], warn) -> list[int] | None:
    if path is None:
        return None
    row = {image_id: k for k, image_id in enumerate(ids)}
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()
             if line.strip()]
    unknown = [n for n in names if n not in row]
    if unknown:
        warn(f"note: {len(unknown)} ids of {path} have no features (e.g. {unknown[0]!r}); "
             "left out")
    return [row[n] for n in names if n in row] or None


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _sheet(path: Path, collection: Collection, rows: list[dict], command: str) -> Path:
    key = "score" if command == "outliers" else "radius_after"
    cells = [(np.asarray(thumbnail(collection.path(r["id"]))), f"{r['rank']}. {r[key]:.3f}")
             for r in rows]
    shown = sheet_rows(cells)
    title = ("outliers: mean cosine distance to the nearest neighbours" if command == "outliers"
             else "to annotate first (k-center greedy): covering radius after each pick")
    return plot_image_grid(shown, path, cell=1.6, title=title)
