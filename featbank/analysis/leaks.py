"""Leaks between the parts of a split: one picture on both sides of it.

A random split of a museum catalogue puts two scans of one object, or a copy
and its original, in training and test alike; the test score then measures
memory. ``leaks`` takes the confirmed near-duplicate pairs of
:mod:`featbank.analysis.pairs` (rotated and mirrored copies included) and
lists those whose two images fall in different parts of the task's saved
split: a CSV (``id_a, part_a, id_b, part_b, cosine``, with the turn and the
local inliers), counts per pair of parts, the test images that have a copy
outside the test part, the top-1 of every stored result on the split with
those test images left out (:mod:`featbank.evaluation.leakfree`), a contact
sheet and the JSON report.
``classify.py --group-by duplicates`` makes a split that keeps each group
of near-duplicates in one part.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from featbank.analysis.common import (
    describe,
    output_folder,
    settings_of,
    single_feature_file,
    thumbnail,
)
from featbank.analysis.config import LeaksConfig
from featbank.analysis.duplicates import confirmed_pairs, file_rows, finish, pair_counts
from featbank.core.fileio import atomic_path, safe_name
from featbank.data.collection import Collection
from featbank.data.saved_splits import load_or_make_split
from featbank.data.tasks import SPLITS
from featbank.evaluation.currency import current_rows
from featbank.evaluation.leakfree import without_leaks
from featbank.evaluation.plots import plot_image_grid
from featbank.store.index import ensure_index
from featbank.store.layout import content_identity
from featbank.store.results import latest_rows, load_results

COLUMNS = ["id_a", "part_a", "id_b", "part_b", "cosine", "rotation", "mirrored", "inliers"]


def leaks(collection: Collection, config: LeaksConfig, *, warn=print) -> dict:
    """Confirmed near-duplicate pairs across the parts of ``config.task``'s split; writes
    CSV, PNG and JSON, returns the JSON report (``rows``: the CSV's rows)."""
    started = time.perf_counter()
    entry = single_feature_file(config.cache_root, collection.name, config.backbone,
                                config.weights, warn=warn)
    split = load_or_make_split(collection, config.task, config.split,
                               Path(config.cache_root) / collection.name, warn=warn)
    index, _ = ensure_index(entry.path, warn=warn)
    ids, provenance = file_rows(entry)
    pairs = confirmed_pairs(collection, entry, ids, provenance, index, config, warn=warn)
    rows = leak_rows(pairs, ids, dict(zip(split.ids, split.parts)))
    counts: dict[str, int] = {}
    for row in rows:
        key = f"{row['part_a']}-{row['part_b']}"
        counts[key] = counts.get(key, 0) + 1
    leaked_test = sorted({r[f"id_{s}"] for r in rows for s in "ab" if r[f"part_{s}"] == "test"})
    folder = output_folder(config.cache_root, collection.name, "leaks")
    stem = f"{safe_name(config.task)}__{split.spec.tag}__{entry.path.stem}__{config.threshold:g}"
    report = {"command": "leaks", "collection": collection.name, "task": config.task,
              **describe(entry), "split_tag": split.spec.tag, "split_digest": split.digest,
              "threshold": config.threshold, "n_images": len(split.ids), **pair_counts(pairs),
              "n_leaks": len(rows), "by_parts": counts, "n_test": split.parts.count("test"),
              "n_test_leaked": len(leaked_test), "test_leaked": leaked_test,
              "csv": str(_write_csv(folder / f"{stem}.csv", rows)),
              "settings": settings_of(config)}
    report["without_leaks"] = without_leaks(
        stored_rows(Path(config.cache_root) / collection.name, config.task, split),
        split.select("test")[0], set(leaked_test))
    if rows and config.sheet:
        report["png"] = str(_sheet(folder / f"{stem}_sheet.png", collection, rows[:config.sheet],
                                   config.task))
    report = finish(report, folder / f"{stem}.json", started)
    report["rows"] = rows
    return report


def stored_rows(folder: Path, task: str, split) -> list[dict]:
    """The current results rows of ``task`` on ``split`` (its tag), from the store."""
    rows = current_rows(latest_rows(load_results(folder)), folder)
    return [r for r in rows if r.get("task") == task and r.get("split_tag") == split.spec.tag]


def current_leaks(folder: Path, split) -> set[str] | None:
    """The leaked test images of the newest ``leaks`` report on ``split`` (same digest)
    whose feature file still holds what it held; None when there is none."""
    found = []
    for path in (folder / "analysis" / "leaks").glob("*.json"):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            if (report.get("split_digest") == split.digest and Path(report["features"]).is_file()
                    and content_identity(Path(report["features"])) == report["features_sha256"]):
                found.append((report["created"], set(report["test_leaked"])))
        except (OSError, ValueError, KeyError):
            continue  # a report being written, or of an older shape: not evidence
    return max(found, key=lambda f: f[0])[1] if found else None


def leak_rows(pairs, ids: list[str], part: dict[str, str]) -> list[dict]:
    """The confirmed pairs whose images are in two parts, the earlier part (train, val,
    test) as ``a``; best cosine first."""
    order = {name: k for k, name in enumerate(SPLITS)}
    rows = []
    for n in np.flatnonzero(pairs.confirmed):
        a, b = ids[pairs.a[n]], ids[pairs.b[n]]
        if a not in part or b not in part or part[a] == part[b]:
            continue
        rotation = int(pairs.rotation[n])
        if order[part[a]] > order[part[b]]:
            a, b, rotation = b, a, (360 - rotation) % 360
        rows.append({"id_a": a, "part_a": part[a], "id_b": b, "part_b": part[b],
                     "cosine": round(float(pairs.cosine[n]), 4), "rotation": rotation,
                     "mirrored": bool(pairs.mirrored[n]), "inliers": int(pairs.inliers[n])})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({**r, "mirrored": int(r["mirrored"])} for r in rows)
    return path


def _sheet(path: Path, collection: Collection, rows: list[dict], task: str) -> Path:
    labels = collection.labels_by_id().get(task, {})
    shown = [(f"{r['part_a']} / {r['part_b']}",
              [(np.asarray(thumbnail(collection.path(r[f"id_{s}"]))),
                f"{labels.get(r[f'id_{s}'], '')} · {r[f'part_{s}']}"[:28]) for s in "ab"])
             for r in rows]
    return plot_image_grid(shown, path, cell=1.6,
                           title=f"leaks across the split of {task}: the best pairs")

