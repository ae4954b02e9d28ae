"""Similarity retrieval on cached features (Cetinic et al. §5.5).

Evaluation: each test image of a task's saved split queries the train and
validation images by cosine similarity; a neighbour is relevant when it shares
the query's label. Reported: precision@k and mAP@k, overall and per class,
with a contact sheet (PNG and HTML) of some queries and their neighbours.

Lookup: any image files (``--query``) are run through the same trunk and
preprocessing as the feature file and matched against the whole collection.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from featbank.analysis.common import (
    THUMB_SIZE,
    describe,
    output_folder,
    preprocess_change,
    read_entry,
    settings_of,
    single_feature_file,
    thumbnail,
    thumbnail_files,
    trunk_weights,
    write_page,
)
from featbank.analysis.config import RetrieveConfig
from featbank.analysis.similarity import average_precision_at_k, precision_at_k
from featbank.core.errors import BadInput, MissingFile
from featbank.core.fileio import atomic_path, atomic_write_json, safe_name
from featbank.data.collection import Collection
from featbank.data.saved_splits import load_or_make_split
from featbank.store.index import ensure_index, search

SHOWN = 10  # neighbours per query on a contact sheet
COLORS = {"query": (40, 90, 200), True: (30, 160, 60), False: (210, 40, 40)}


def retrieve(collection: Collection, config: RetrieveConfig, *, warn=print) -> dict:
    """Evaluate retrieval on ``config.task``'s split; writes JSON, PNG and HTML, returns the JSON."""
    started = time.perf_counter()
    entry = single_feature_file(config.cache_root, collection.name, config.backbone,
                                config.weights, warn=warn)
    split = load_or_make_split(collection, config.task, config.split,
                               Path(config.cache_root) / collection.name)
    data = read_entry(entry)
    row = {image_id: k for k, image_id in enumerate(data.ids)}
    part = dict(zip(split.ids, split.parts))
    label = dict(zip(split.ids, split.labels))
    gallery = [i for i in split.ids if part[i] != "test" and i in row]
    queries = [i for i in split.ids if part[i] == "test" and i in row]
    if not queries or not gallery:
        raise BadInput(f"task {config.task!r}: {len(queries)} test and {len(gallery)} train/val "
                         f"images have features in {entry.path.name}; run extract.py first")
    y_gallery = np.array([label[i] for i in gallery], dtype=object)
    y_query = np.array([label[i] for i in queries], dtype=object)
    if config.k > len(gallery):
        raise BadInput(f"--k {config.k} but the gallery holds {len(gallery)} images; use --k "
                       f"between 1 and {len(gallery)}")
    index, info = ensure_index(entry.path, warn=warn)  # built once, kept beside the file
    gallery_rows = np.array([row[i] for i in gallery])
    rows, similarity = search(index, data.X[[row[i] for i in queries]], config.k,
                              rows=gallery_rows)
    position = np.full(len(data.ids), -1)
    position[gallery_rows] = np.arange(len(gallery_rows))
    found = position[rows]
    relevant = y_gallery[found] == y_query[:, None]
    per_label = dict(zip(*np.unique(y_gallery, return_counts=True)))
    n_relevant = np.array([per_label.get(y, 0) for y in y_query])
    precision = precision_at_k(relevant)
    ap = average_precision_at_k(relevant, n_relevant)
    folder = output_folder(config.cache_root, collection.name, "retrieve")
    stem = f"{safe_name(config.task)}__{entry.path.stem}__k{config.k}"
    report = {
        "command": "retrieve", "collection": collection.name, "task": config.task,
        **describe(entry), "split_tag": split.spec.tag, "similarity": "cosine", "k": config.k,
        "gallery": "train+val", "n_gallery": len(gallery), "n_queries": len(queries),
        "index": {"kind": info.kind, "factory": info.factory, "nprobe": info.nprobe},
        "precision_at_k": float(precision.mean()), "map_at_k": float(ap.mean()),
        # what precision@k would be with neighbours drawn at random from the gallery
        "chance_precision_at_k": float(np.mean(n_relevant / len(gallery))),
        "per_class": _per_class(y_query, precision, ap), "settings": settings_of(config),
        "seconds": round(time.perf_counter() - started, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    shown = _sheet_queries(y_query, config.sheet, config.split.seed)
    if shown:
        rows = [(queries[q], str(y_query[q]),
                 [(gallery[g], str(y_gallery[g]), float(s), bool(r)) for g, s, r in
                  zip(found[q][:SHOWN], similarity[q][:SHOWN], relevant[q][:SHOWN])])
                for q in shown]
        report["contact_sheet"] = str(_write_sheet(folder / f"{stem}_sheet.png", collection, rows))
        report["html"] = str(_write_html(folder / f"{stem}.html", collection, rows, report))
    atomic_write_json(folder / f"{stem}.json", report)
    report["json"] = str(folder / f"{stem}.json")
    return report


def lookup(collection: Collection, config: RetrieveConfig, *, warn=print) -> dict:
    """The k collection images nearest to each ``config.queries`` file; writes JSON and HTML."""
    import torch

    from featbank.data.images import decode_views
    from featbank.models.inference import TrunkRunner, resolve_device
    from featbank.models.registry import get_spec
    from featbank.models.trunks import load_trunk

    entry = single_feature_file(config.cache_root, collection.name, config.backbone,
                                config.weights, warn=warn)
    data = read_entry(entry)
    spec = get_spec(entry.backbone)
    change = preprocess_change(data.provenance, spec.preprocess.attrs())
    if change:  # queries must be preprocessed as the file's images were
        key, was, now = change
        raise BadInput(f"{entry.path.name} was extracted with {key}={was!r}, but "
                         f"{entry.backbone} now preprocesses with {now!r}; re-extract it")
    views = []
    for path in config.queries:
        if not Path(path).is_file():
            raise MissingFile(f"query image {path} not found")
        [view], reason = decode_views(path, [spec.preprocess])
        if reason:
            raise BadInput(f"query image {path} cannot be read: {reason}")
        views.append(view)
    weights = trunk_weights(entry, data.provenance, config.weights_file)
    runner = TrunkRunner(spec, load_trunk(spec, weights, option="--weights-file",
                                          progress=config.progress),
                         resolve_device(config.device), None)
    vectors = runner.submit(torch.stack(views))()
    index, _ = ensure_index(entry.path, warn=warn)
    found, similarity = search(index, vectors, min(config.k, len(data.ids)))
    labels = collection.labels_by_id()
    results = [{"image": str(path), "neighbours": [
        {"id": data.ids[g], "similarity": float(s),
         "labels": {t: labels[t].get(data.ids[g]) for t in labels}}
        for g, s in zip(found[q], similarity[q])]} for q, path in enumerate(config.queries)]
    folder = output_folder(config.cache_root, collection.name, "retrieve")
    stem = f"query__{entry.path.stem}"
    report = {"command": "retrieve --query", "collection": collection.name, **describe(entry),
              "similarity": "cosine", "k": config.k, "gallery": "all", "n_gallery": len(data.ids),
              "queries": results, "settings": settings_of(config),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    task = config.task or (collection.tasks[0] if collection.tasks else None)
    rows = [(r["image"], "query",
             [(n["id"], str(n["labels"].get(task, "")), n["similarity"], None)
              for n in r["neighbours"][:SHOWN]]) for r in results]
    report["html"] = str(_write_html(folder / f"{stem}.html", collection, rows, report))
    atomic_write_json(folder / f"{stem}.json", report)
    report["json"] = str(folder / f"{stem}.json")
    return report


def _per_class(y_query: np.ndarray, precision: np.ndarray, ap: np.ndarray) -> dict:
    return {str(c): {"precision_at_k": float(precision[y_query == c].mean()),
                     "map_at_k": float(ap[y_query == c].mean()),
                     "n_queries": int((y_query == c).sum())} for c in np.unique(y_query)}



def _sheet_queries(labels: np.ndarray, n: int, seed: int) -> list[int]:
    """Up to ``n`` query rows, one class after another, seeded: every class gets a turn."""
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop()))
    return chosen


def _image_path(collection: Collection, key: str) -> Path:
    path = collection.path(key)
    return path if path.is_file() else Path(key)


def _write_sheet(path: Path, collection: Collection, rows) -> Path:
    """A PNG grid: each query (blue frame), then its neighbours framed green (same label)
    or red, captioned with label and similarity."""
    cell, pad, caption = THUMB_SIZE + 8, 4, 14
    columns = 1 + max(len(neighbours) for _, _, neighbours in rows)
    sheet = Image.new("RGB", (columns * (cell + pad) + pad, len(rows) * (cell + caption + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for r, (query, query_label, neighbours) in enumerate(rows):
        y = pad + r * (cell + caption + pad)
        items = [(query, query_label, None, "query")] + [(g, lab, s, ok) for g, lab, s, ok in neighbours]
        for c, (key, lab, sim, ok) in enumerate(items):
            x = pad + c * (cell + pad)
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=COLORS.get(ok, (150, 150, 150)))
            thumb = thumbnail(_image_path(collection, key))
            sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
            text = lab if sim is None else f"{lab[:12]} {sim:.2f}"
            draw.text((x + 2, y + cell + 1), text[:20], fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def _write_html(path: Path, collection: Collection, rows, report: dict) -> Path:
    keys = {key: _image_path(collection, key) for key, _, neighbours in rows
            for key in [key] + [g for g, *_ in neighbours]}
    thumbs = thumbnail_files(keys, path.parent)
    css = {"query": "#2860c8", True: "#1ea03c", False: "#d22828", None: "#999"}

    def item(key, label, similarity, ok):
        return {"id": key, "thumb": thumbs[key], "label": label, "similarity": similarity,
                "color": css[ok]}
    return write_page(path, "retrieve.html.j2", title=f"Retrieval: {collection.name}",
                      backbone=report["backbone"], weights=report["weights"][:19],
                      gallery=report["gallery"], n_gallery=report["n_gallery"],
                      precision_at_k=report.get("precision_at_k"), k=report.get("k"),
                      map_at_k=report.get("map_at_k"), n_queries=report.get("n_queries"),
                      rows=[[item(query, label, None, "query")] + [item(*n) for n in neighbours]
                            for query, label, neighbours in rows])
