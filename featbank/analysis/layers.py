"""What fine-tuning changes, stage by stage (Gonthier et al. §5).

For each stage of the trunk: the relative weight distance ||θ₂ − θ|| / ||θ||
between two trunks of the same architecture, and the linear CKA between
their stage outputs (global-average-pooled) on the same collection images.
Both networks see the images with the first network's preprocessing.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone

from featbank.analysis.common import file_label, output_folder, progress_bar
from featbank.analysis.config import LayersConfig
from featbank.analysis.networks import load_network, sample_ids, stage_activations, weight_distance
from featbank.analysis.similarity import linear_cka
from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_write_json
from featbank.data.collection import Collection
from featbank.evaluation.plots import plot_layers
from featbank.models.inference import resolve_device, resolve_workers


def layers(collection: Collection, config: LayersConfig, *, warn=print) -> dict:
    """Per-stage weight distance and CKA of ``config.weights`` vs ``config.compare``."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    first = load_network(config.backbone, config.weights, progress=config.progress)
    second = load_network(config.backbone, config.compare, option="--compare",
                          progress=config.progress)
    stages_a, stages_b = first.stages, second.stages
    ids = sample_ids(collection.ids, config.n, config.seed)
    run = dict(device=device, batch_size=config.batch_size,
               workers=resolve_workers(config.workers, device),
               progress=progress_bar(config.progress), preprocess=first.preprocess)
    kept_a, outputs_a = stage_activations(first, collection, ids, stages_a, **run)
    kept_b, outputs_b = stage_activations(second, collection, ids, stages_b, **run)
    if kept_a != kept_b or len(kept_a) < 4:
        raise BadInput(f"only {len(kept_a)} of {len(ids)} images could be read; layers needs "
                         "at least 4")
    rows = []
    for a, b, xa, xb in zip(stages_a, stages_b, outputs_a, outputs_b):
        cka = None
        if xa is not None and xb is not None:
            try:
                cka = linear_cka(xa, xb)
            except ValueError:  # a constant representation (e.g. dead units of a random trunk)
                warn(f"stage {a.name}: outputs are constant over the images; CKA undefined")
        rows.append({"index": a.index, "name": a.name,
                     "weight_distance": weight_distance(a, b), "cka": cka,
                     "n_params": sum(p.numel() for p in a.parameters()),
                     "channels": None if xa is None else int(xa.shape[1])})
    folder = output_folder(config.cache_root, collection.name, "layers")
    stem = (f"{first.spec.name}__{file_label(first.label)}__vs__{file_label(second.label)}"
            f"__n{len(kept_a)}")
    report = {
        "command": "layers", "collection": collection.name, "backbone": first.spec.name,
        "weights": first.weights.id, "weights_exact": first.weights.exact, "label": first.label,
        "compare": second.weights.id, "compare_exact": second.weights.exact,
        "compare_label": second.label, "n_images": len(kept_a), "stages": rows,
        "preprocess": first.preprocess.attrs(), "settings": asdict(config),
        "seconds": round(time.perf_counter() - started, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    report["png"] = str(plot_layers(rows, folder / f"{stem}.png",
                                    title=f"{first.spec.name}: {first.label} vs {second.label} "
                                          f"({len(kept_a)} images)"))
    atomic_write_json(folder / f"{stem}.json", report)
    report["json"] = str(folder / f"{stem}.json")
    return report
