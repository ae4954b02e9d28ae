"""Which images each channel answers to, and how fine-tuning changes that (Gonthier et al. §5).

For every channel of a stage, the K collection images with the highest
global-average-pooled activation. Reported per channel: the class entropy of
those K images (in bits; low = the channel is class-specific) and, with a
second network, the overlap of the two top-K sets (1 = unchanged). The last
stage (the default) is what the feature cache holds: when both networks have
feature files made with the same preprocessing, every cached image is ranked
without running a network; otherwise ``--n`` images are run through the trunks.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone

import numpy as np

from featbank.analysis.common import (
    file_label,
    output_folder,
    preprocess_change,
    progress_bar,
    read_entry,
    single_feature_file,
    thumbnail,
)
from featbank.analysis.config import TopImagesConfig
from featbank.analysis.networks import (
    Network,
    load_network,
    pick_stage,
    sample_ids,
    stage_activations,
)
from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_write_json
from featbank.data.collection import Collection
from featbank.evaluation.plots import plot_image_grid
from featbank.models.inference import resolve_device, resolve_workers
from featbank.store.provenance import recorded

SHOWN_CHANNELS = 8
SHOWN_IMAGES = 6


def top_images(collection: Collection, config: TopImagesConfig, *, warn=print) -> dict:
    started = time.perf_counter()
    task = config.task or (collection.tasks[0] if collection.tasks else None)
    if task not in collection.labels:
        raise BadInput(f"unknown task {task!r}; collection {collection.name!r} has "
                         f"{', '.join(collection.tasks) or 'no tasks'}")
    networks = [load_network(config.backbone, config.weights, progress=config.progress)]
    if config.compare:
        networks.append(load_network(config.backbone, config.compare, option="--compare",
                                     progress=config.progress))
    stage = pick_stage(networks[0].stages, config.stage, config.backbone)
    label = {i: y for i, y in collection.labels_by_id()[task].items() if y is not None}
    ids, activations, source = _cached(collection, config, networks, stage, label, warn)
    if activations is None:
        ids = sample_ids([i for i in collection.ids if i in label], config.n, config.seed)
        activations, device = [], resolve_device(config.device)
        for network in networks:
            kept, [x] = stage_activations(
                network, collection, ids, [network.stages[stage.index - 1]],
                device=device, batch_size=config.batch_size,
                workers=resolve_workers(config.workers, device),
                progress=progress_bar(config.progress), preprocess=networks[0].preprocess)
            if x is None:
                raise BadInput(f"stage {stage.name} does not run in the eval forward pass; "
                                 "pick another --stage")
            activations.append(x)
        ids, source = kept, "computed"
    if len(ids) < config.k:
        raise BadInput(f"--k {config.k} is more than the {len(ids)} images ranked")
    y = np.array([label[i] for i in ids], dtype=object)
    tops = [_top_k(x, config.k) for x in activations]  # (channels, k) row indices
    entropies = [_entropy(y[top]) for top in tops]
    _, counts = np.unique(y, return_counts=True)
    report = {
        "command": "top-images", "collection": collection.name, "backbone": config.backbone,
        "weights": networks[0].weights.id, "label": networks[0].label, "task": task,
        "stage": stage.name, "stage_index": stage.index, "channels": int(tops[0].shape[0]),
        "k": config.k, "n_images": len(ids), "source": source,
        # entropy of k images drawn at random: what a channel blind to classes would score
        "label_entropy": float(_entropy_of_counts(counts)),
        "entropy": _summary(entropies[0]), "settings": asdict(config)}
    order = np.argsort(entropies[0], kind="stable")
    if len(networks) == 2:
        overlap = np.array([len(np.intersect1d(a, b)) / config.k for a, b in zip(*tops)])
        report.update(compare=networks[1].weights.id, compare_label=networks[1].label,
                      entropy_compare=_summary(entropies[1]), overlap=_summary(overlap))
        order = np.argsort(overlap, kind="stable")
    folder = output_folder(config.cache_root, collection.name, "top-images")
    names = "__vs__".join(file_label(n.label) for n in networks)
    stem = (f"{file_label(task)}__{config.backbone}__{names}__{file_label(stage.name)}"
            f"__k{config.k}__n{len(ids)}")
    report["png"] = str(_grid(folder / f"{stem}.png", collection, ids, y, tops, networks,
                              order[:SHOWN_CHANNELS], report))
    report["seconds"] = round(time.perf_counter() - started, 3)
    report["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(folder / f"{stem}.json", report)
    report["json"] = str(folder / f"{stem}.json")
    return report


def _cached(collection, config, networks: list[Network], stage, label: dict, warn):
    """The last stage's activations from the feature cache, when every network has a file
    made with the preprocessing used here and in fp32, as here (a bf16 file's rows differ
    at the rounding level, which reorders near ties); else (None, None, None)."""
    if stage.index != len(networks[0].stages):
        return None, None, None
    try:
        entries = [single_feature_file(config.cache_root, collection.name, n.spec.name,
                                       n.weights.id, warn=lambda m: None) for n in networks]
    except (FileNotFoundError, ValueError):  # no such file, or not one
        return None, None, None
    sets = [read_entry(e) for e in entries]
    wanted = networks[0].preprocess.attrs()
    if any(preprocess_change(s.provenance, wanted) or recorded(s.provenance, "precision")
           != "fp32" for s in sets):
        return None, None, None
    shared = set.intersection(*(set(s.ids) for s in sets))
    ids = [i for i in sets[0].ids if i in shared and i in label]
    if len(ids) < config.k:
        return None, None, None
    rows = [{i: k for k, i in enumerate(s.ids)} for s in sets]
    return ids, [s.X[[r[i] for i in ids]] for s, r in zip(sets, rows)], "feature cache"


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    """(n, C) activations -> (C, k) row indices, highest first."""
    part = np.argpartition(-x, k - 1, axis=0)[:k].T
    order = np.argsort(-np.take_along_axis(x.T, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _entropy(labels: np.ndarray) -> np.ndarray:
    """(C, k) labels -> (C,) Shannon entropy of each row's label distribution, in bits."""
    return np.array([_entropy_of_counts(np.unique(row, return_counts=True)[1]) for row in labels])


def _entropy_of_counts(counts: np.ndarray) -> float:
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0


def _summary(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "min": float(values.min()), "max": float(values.max()),
            "per_channel": [round(float(v), 6) for v in values]}


def _grid(path, collection, ids, y, tops, networks, channels, report):
    rows = []
    for c in channels:
        for network, top, key in zip(networks, tops, ("entropy", "entropy_compare")):
            title = f"ch {c} · {network.label[:16]}\nH={report[key]['per_channel'][c]:.2f}"
            if "overlap" in report and key == "entropy":
                title += f" · overlap {report['overlap']['per_channel'][c]:.2f}"
            rows.append((title, [(np.asarray(thumbnail(collection.path(ids[r]))), str(y[r])[:14])
                                 for r in top[c][:SHOWN_IMAGES]]))
    what = "lowest overlap" if len(networks) == 2 else "lowest class entropy"
    return plot_image_grid(rows, path, title=f"{report['backbone']} {report['stage']}: top "
                           f"images of the {len(channels)} channels with the {what}")
