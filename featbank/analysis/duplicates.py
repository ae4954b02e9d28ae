"""Near-duplicate images: re-scans, crops, rotated, mirrored and colour-corrected copies,
within a collection or across two.

Pairs come from :mod:`featbank.analysis.pairs`: neighbours in the feature
file's similarity index at cosine ``threshold`` or more, the images also
queried turned by 90, 180 and 270 degrees, each pair confirmed by geometric
verification of local features; confirmed pairs are linked, and linked
images form groups (connected components). Outputs: a CSV
(group, id, similarity to the group's first image), a CSV of every candidate
pair (cosine, rotation, inliers, confirmed), contact sheets of the
largest groups, an HTML page to page through every group, and the JSON report.
``across`` instead asks which images of this collection duplicate images of
another one (its feature file made by the same backbone and weights): a CSV of
pairs (id here, id there, similarity).
"""
from __future__ import annotations

import csv
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from featbank.analysis.common import (
    describe,
    output_folder,
    progress_bar,
    single_feature_file,
    thumbnail_files,
    write_page,
)
from featbank.analysis.config import DuplicatesConfig
from featbank.analysis.pairs import Pairs, PairSettings, find_pairs, near_pairs
from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path, atomic_write_json, safe_name
from featbank.data.collection import Collection
from featbank.data.sources import cached_collection
from featbank.evaluation.plots import plot_image_grid
from featbank.store.index import ensure_index
from featbank.store.provenance import plain_attrs, provenance_conflict

PER_PAGE = 20  # groups per HTML page


def duplicates(collection: Collection, config: DuplicatesConfig, *, warn=print) -> dict:
    """Groups of near-duplicates in ``collection`` (or, with ``config.across``, pairs with
    another collection); writes CSV, PNG, HTML and JSON, returns the JSON report."""
    started = time.perf_counter()
    entry = single_feature_file(config.cache_root, collection.name, config.backbone,
                                config.weights, warn=warn)
    folder = output_folder(config.cache_root, collection.name, "duplicates")
    if config.across:
        return _across(collection, entry, config, folder, started, warn)
    index, info = ensure_index(entry.path, warn=warn)
    ids, provenance = file_rows(entry)
    pairs = confirmed_pairs(collection, entry, ids, provenance, index, config, warn=warn)
    kept = pairs.confirmed
    groups = connected_groups(len(ids), np.column_stack([pairs.a[kept], pairs.b[kept]]))
    stem = f"{entry.path.stem}__{config.threshold:g}"
    similarity = _to_first(entry.path, groups)
    csv_path = _write_groups_csv(folder / f"{stem}.csv", groups, ids, similarity)
    report = {"command": "duplicates", "collection": collection.name, **describe(entry),
              "index": asdict(info), "threshold": config.threshold, "k": config.k,
              "n_images": len(ids), "n_groups": len(groups),
              "n_images_in_groups": int(sum(len(g) for g in groups)),
              "largest": [len(g) for g in groups[:10]], **pair_counts(pairs),
              "csv": str(csv_path),
              "pairs_csv": str(write_pairs_csv(folder / f"{stem}__pairs.csv", pairs, ids)),
              "settings": asdict(config)}
    shown = [[(ids[r], s) for r, s in zip(group, similarity[k])]
             for k, group in enumerate(groups)]
    if shown and config.sheet:
        report["png"] = str(_sheet(folder / f"{stem}_largest.png", collection, shown[:config.sheet],
                                   config.threshold))
    if shown:
        report["html"] = str(_html(folder / f"{stem}.html", collection, shown, report))
    return finish(report, folder / f"{stem}.json", started)


def file_rows(entry) -> tuple[list[str], dict]:
    """The ids (file order) and attributes of a feature file, without its vectors."""
    with h5py.File(entry.path, "r") as f:
        return f["ids"].asstr()[:].tolist(), plain_attrs(dict(f.attrs))


def confirmed_pairs(collection: Collection, entry, ids, provenance, index, config, *,
                    warn=print) -> Pairs:
    """Candidate pairs of ``config``'s settings (threshold, k, rotations, verify), each
    confirmed by local features when OpenCV is there (``verify=auto``)."""
    settings = PairSettings(threshold=config.threshold, k=config.k, rotations=config.rotations,
                            verify=config.verify, min_inliers=config.min_inliers)
    if config.verify == "auto" and not settings.checks():
        warn("note: pairs are not verified by local features (OpenCV is not installed: "
             "pip install 'featbank[quality]')")
    return find_pairs(collection, entry, ids, provenance, index, settings,
                      cache_root=config.cache_root, weights_file=config.weights_file,
                      device=config.device, progress=progress_bar(config.progress))


def pair_counts(pairs: Pairs) -> dict:
    kept = pairs.confirmed
    return {"verified": pairs.verified,
            "min_inliers": pairs.min_inliers if pairs.verified else None,
            "n_candidates": len(pairs), "n_pairs": int(kept.sum()),
            "n_rejected": int(len(pairs) - kept.sum()),
            "n_rotated": int((kept & (pairs.rotation != 0)).sum())}


def write_pairs_csv(path: Path, pairs: Pairs, ids: list[str]) -> Path:
    """Every candidate pair: ids, cosine, the turn from a to b, inliers, whether confirmed."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id_a", "id_b", "cosine", "rotation", "mirrored", "inliers",
                         "confirmed"])
        for n in range(len(pairs)):
            writer.writerow([ids[pairs.a[n]], ids[pairs.b[n]], f"{pairs.cosine[n]:.4f}",
                             int(pairs.rotation[n]), int(pairs.mirrored[n]),
                             int(pairs.inliers[n]), int(pairs.confirmed[n])])
    return path


def connected_groups(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components of the rows ``pairs`` links (its first two columns: row,
    row), by union-find, largest first; each group's rows in file order, so its first
    image is the earliest."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for i, j in pairs[:, :2] if len(pairs) else []:
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    linked = np.unique(pairs[:, :2].astype(int)) if len(pairs) else np.zeros(0, dtype=int)
    for i in linked:
        members.setdefault(root(int(i)), []).append(int(i))
    return sorted((sorted(g) for g in members.values() if len(g) > 1),
                  key=lambda g: (-len(g), g[0]))


def _to_first(path: Path, groups: list[list[int]]) -> list[list[float]]:
    """Each member's cosine similarity to its group's first image (1.0 for the first)."""
    out = []
    with h5py.File(path, "r") as f:
        for group in groups:
            X = f["features"][np.array(group)]
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
            out.append((X @ X[0]).round(4).tolist())
    return out


def _write_groups_csv(path: Path, groups, ids, similarity) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["group", "id", "similarity_to_first"])
        for k, group in enumerate(groups, 1):
            writer.writerows((k, ids[r], f"{s:.4f}") for r, s in zip(group, similarity[k - 1]))
    return path


def _across(collection, entry, config: DuplicatesConfig, folder: Path, started: float, warn):
    other = cached_collection(cache=config.cache_root, collection=config.across)
    theirs = single_feature_file(config.cache_root, other.name, config.backbone, config.weights,
                                 warn=warn)
    with h5py.File(entry.path, "r") as a, h5py.File(theirs.path, "r") as b:
        conflict = provenance_conflict(plain_attrs(dict(b.attrs)), plain_attrs(dict(a.attrs)))
        if conflict:
            key, was, now = conflict
            raise BadInput(f"{entry.path.name} ({collection.name}) and {theirs.path.name} "
                           f"({other.name}) were made differently ({key}: {now!r} vs {was!r}); "
                           "extract both with the same backbone and weights")
        index, _ = ensure_index(theirs.path, warn=warn)
        ours_ids, their_ids = a["ids"].asstr()[:].tolist(), b["ids"].asstr()[:].tolist()
        pairs = near_pairs(index, a["features"], config.threshold, config.k, skip_self=False)
    path = folder / f"{entry.path.stem}__across-{safe_name(other.name)}__{config.threshold:g}.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", f"id in {other.name}", "similarity"])
        for i, j, s in sorted(pairs.tolist(), key=lambda p: (p[0], -p[2])):
            writer.writerow([ours_ids[int(i)], their_ids[int(j)], f"{s:.4f}"])
    found = sorted({int(i) for i in pairs[:, 0]}) if len(pairs) else []
    report = {"command": "duplicates --across", "collection": collection.name,
              "across": other.name, **describe(entry), "threshold": config.threshold,
              "k": config.k, "n_images": len(ours_ids), "n_duplicated": len(found),
              "n_pairs": int(len(pairs)), "csv": str(path), "settings": asdict(config)}
    return finish(report, path.with_suffix(".json"), started)


def finish(report: dict, path: Path, started: float) -> dict:
    report["seconds"] = round(time.perf_counter() - started, 3)
    report["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(path, report)
    report["json"] = str(path)
    return report


def _sheet(path: Path, collection: Collection, groups, threshold: float) -> Path:
    """A contact sheet: one row per group (the largest first), its images captioned with
    their similarity to the group's first."""
    from featbank.analysis.common import thumbnail

    rows = []
    for k, group in enumerate(groups, 1):
        cells = [(np.asarray(thumbnail(collection.path(i))), f"{s:.3f}") for i, s in group[:8]]
        rows.append((f"group {k} ({len(group)})", cells))
    return plot_image_grid(rows, path, cell=1.6,
                           title=f"near-duplicates, cosine >= {threshold:g}: largest groups")


def _html(path: Path, collection: Collection, groups, report: dict) -> Path:
    """Every group, PER_PAGE a page, with buttons to page through them (plain JavaScript)."""
    keys = {i: collection.path(i) for group in groups for i, _ in group}
    thumbs = thumbnail_files(keys, path.parent)
    return write_page(path, "duplicates.html.j2", title=f"Near-duplicates: {report['collection']}",
                      n_groups=report["n_groups"], threshold=f"{report['threshold']:g}",
                      n_images=report["n_images"], collection=report["collection"],
                      backbone=report["backbone"], per_page=PER_PAGE,
                      groups=[[(i, thumbs[i], s) for i, s in group] for group in groups])
