"""A 2-D map of one feature file, coloured by a task: UMAP when installed, else t-SNE.

Vectors are L2-normalised and reduced by PCA to 50 dimensions first (the
usual preparation for both methods). Collections larger than ``max_points``
are mapped on a seeded sample that keeps each class's share. Outputs: a PNG,
a CSV of the coordinates, and an HTML page whose points show the image's
thumbnail and labels on hover.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone

import numpy as np

from featbank.analysis.common import (
    describe,
    output_folder,
    progress_bar,
    read_entry,
    single_feature_file,
    task_labels,
    thumbnail_files,
    write_page,
)
from featbank.analysis.config import MapConfig
from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path, atomic_write_json, safe_name
from featbank.data.collection import Collection
from featbank.evaluation.plots import plot_map

PCA_DIMS = 50
UNLABELLED = "(unlabelled)"


def make_map(collection: Collection, config: MapConfig, *, warn=print) -> dict:
    """Map ``config.backbone``'s features coloured by ``config.task``; returns the JSON report."""
    started = time.perf_counter()
    entry = single_feature_file(config.cache_root, collection.name, config.backbone,
                                config.weights, warn=warn)
    data = read_entry(entry)
    labels = task_labels(collection, config.task, data.ids)
    labels = np.where(labels == None, UNLABELLED, labels).astype(str)  # noqa: E711 - elementwise
    rows = sample_rows(labels, config.max_points, config.seed)
    if len(rows) < len(labels):
        warn(f"mapping a class-stratified sample of {len(rows)} of {len(labels)} images "
             "(--max-points to change)")
    if len(rows) < 10:
        raise BadInput(f"{entry.path.name} holds {len(rows)} images; a map needs at least 10")
    method = _method(config.method)
    warn(f"{method} on {len(rows)} points ...")
    xy = embed(data.X[rows], method, config.seed)
    ids = [data.ids[r] for r in rows]
    folder = output_folder(config.cache_root, collection.name, "map")
    stem = f"{safe_name(config.task)}__{entry.path.stem}__{method}"
    report = {"command": "map", "collection": collection.name, "task": config.task,
              **describe(entry), "method": method, "n_points": len(rows),
              "n_images": len(labels), "silhouette_2d": _silhouette(xy, labels[rows]),
              "settings": asdict(config), "created": None}
    with atomic_path(folder / f"{stem}.png") as tmp:
        plot_map(xy, labels[rows], f"{entry.backbone} ({entry.weights[:19]}), {method}, "
                 f"coloured by {config.task}", tmp)
    report["png"] = str(folder / f"{stem}.png")
    by_task = collection.labels_by_id()
    report["points_csv"] = str(_write_points(folder / f"{stem}.csv", ids, xy, by_task))
    thumbs = thumbnail_files({i: collection.path(i) for i in ids}, folder, size=96,
                             progress=progress_bar(config.progress))
    report["html"] = str(_write_html(folder / f"{stem}.html", ids, xy, labels[rows], thumbs,
                                     by_task, collection.name, report))
    report["seconds"] = round(time.perf_counter() - started, 3)
    report["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(folder / f"{stem}.json", report)
    report["json"] = str(folder / f"{stem}.json")
    return report


def sample_rows(labels: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Sorted row numbers: all rows, or a seeded sample of ``max_points`` keeping each label's
    share (at least one row per label while there is room)."""
    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    names, inverse = np.unique(labels, return_inverse=True)
    quota = np.maximum(1, np.floor(np.bincount(inverse) * max_points / n)).astype(int)
    chosen = [rng.choice(np.flatnonzero(inverse == k), size=min(q, (inverse == k).sum()),
                         replace=False) for k, q in enumerate(quota)]
    rows = np.concatenate(chosen)
    if len(rows) > max_points:
        rows = rng.choice(rows, size=max_points, replace=False)
    else:  # rounding down left room: fill it from the rest
        rest = np.setdiff1d(np.arange(n), rows)
        rows = np.concatenate([rows, rng.choice(rest, size=max_points - len(rows), replace=False)])
    return np.sort(rows)


def _method(name: str) -> str:
    if name != "auto":
        if name == "umap":
            _require_umap()
        return name
    try:
        import umap  # noqa: F401
        return "umap"
    except ImportError:
        return "tsne"


def _require_umap() -> None:
    try:
        import umap  # noqa: F401
    except ImportError:
        raise BadInput("--method umap needs umap-learn: pip install 'featbank[analysis]' "
                          "(or use --method tsne)") from None


def embed(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(n, d) -> (n, 2): L2 normalisation, PCA to 50 dimensions, then UMAP or t-SNE."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    x = normalize(np.asarray(features, dtype=np.float32))
    dims = min(PCA_DIMS, x.shape[1], len(x) - 1)
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1),
                         random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(x) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                n_jobs=None).fit_transform(x)


def _silhouette(xy: np.ndarray, labels: np.ndarray) -> float | None:
    """How well the task's classes separate on the map (-1 to 1); None with one class."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return None
    return float(silhouette_score(xy, labels, sample_size=min(len(labels), 5000), random_state=0))


def _write_points(path, ids, xy, by_task: dict):
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "x", "y", *by_task])
        for image_id, (x, y) in zip(ids, xy):
            writer.writerow([image_id, f"{x:.4f}", f"{y:.4f}",
                             *(by_id.get(image_id) or "" for by_id in by_task.values())])
    return path


def _write_html(path, ids, xy, labels, thumbs, by_task: dict, name: str, report: dict):
    """An SVG scatter; hovering a point shows its thumbnail and every task's label."""
    import colorsys

    size, margin = 760, 10
    low, high = xy.min(axis=0), xy.max(axis=0)
    scaled = margin + (xy - low) / np.maximum(high - low, 1e-12) * (size - 2 * margin)
    names = sorted(set(labels))
    color = {n: "#%02x%02x%02x" % tuple(int(255 * v) for v in colorsys.hsv_to_rgb(
        k / max(1, len(names)), 0.75, 0.85)) for k, n in enumerate(names)}
    points = [{"id": i, "t": thumbs[i], "l": {t: by_task[t].get(i) for t in by_task}} for i in ids]
    return write_page(path, "map.html.j2", title=f"Map: {name}", backbone=report["backbone"],
                      weights=report["weights"][:19], method=report["method"],
                      n_points=report["n_points"], task=report["task"],
                      legend=[(n, color[n]) for n in names[:40]], size=size,
                      circles=[(float(x), float(y), color[lab])
                               for (x, y), lab in zip(scaled, labels)], points=points)
