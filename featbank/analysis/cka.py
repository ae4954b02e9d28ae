"""Linear CKA between feature files (Kornblith et al. 2019; used by Gonthier et al.).

Every pair of files is compared on the image ids they share, rows aligned by
id. The layers of one network (``extract.py --layers``) come in depth order
whatever order the files were given in, so ``--features features/xception__*``
gives the stage x stage matrix, and files of two networks the matrix within and
across them. The matrix goes to JSON (key ``cka``) with a heatmap beside it.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from featbank.analysis.common import file_label, output_folder, progress_bar
from featbank.analysis.config import CkaConfig
from featbank.analysis.similarity import cka_matrix
from featbank.core.fileio import atomic_path, atomic_write_json
from featbank.core.settings import digest
from featbank.evaluation.plots import plot_similarity
from featbank.store.features import align_on_ids, read_features


def cka(config: CkaConfig, *, warn=print) -> dict:
    """CKA between every pair of ``config.features``; writes JSON and a heatmap PNG."""
    started = time.perf_counter()
    sets = [read_features(path) for path in config.features]
    order = _depth_order(sets)
    sets, config.features = [sets[k] for k in order], [config.features[k] for k in order]
    ids, matrices = align_on_ids(sets, [Path(p).name for p in config.features])
    for path, data in zip(config.features, sets):
        if len(data.ids) > len(ids):
            warn(f"{Path(path).name}: {len(data.ids) - len(ids)} of its {len(data.ids)} rows are "
                 "not in every file and are left out")
    matrix = cka_matrix(matrices, debiased=config.debiased, progress=progress_bar(config.progress))
    names = _names(config.features, sets)
    collection = str(sets[0].provenance.get("collection") or Path(config.features[0]).parent.parent.name)
    folder = output_folder(config.cache_root, collection, "cka")
    key = digest([str(Path(p).resolve()) for p in config.features] + [config.debiased], 8)
    stem = "cka__" + "__".join(file_label(n) for n in names)[:100] + f"__{key}"
    report = {"command": "cka", "collection": collection, "names": names,
              "features": [str(p) for p in config.features],
              "weights_exact": [str(d.provenance.get("weights_exact", d.provenance.get("weights"))) for d in sets],
              "estimator": "debiased linear CKA" if config.debiased else "linear CKA",
              "n_shared_ids": len(ids), "cka": matrix.round(6).tolist(),
              "settings": asdict(config), "seconds": round(time.perf_counter() - started, 3),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with atomic_path(folder / f"{stem}.png") as tmp:
        plot_similarity(matrix, names, f"{report['estimator']} ({len(ids)} images)", tmp)
    report["heatmap"] = str(folder / f"{stem}.png")
    atomic_write_json(folder / f"{stem}.json", report)
    report["json"] = str(folder / f"{stem}.json")
    return report


def _depth_order(sets) -> list[int]:
    """Positions of the files: networks in the order first given, each one's layers from
    the input to its output (``final`` last)."""
    def network(data):
        return data.provenance.get("backbone"), str(data.provenance.get("weights_exact"))
    first = {}
    for k, data in enumerate(sets):
        first.setdefault(network(data), k)

    def place(k):
        attrs = sets[k].provenance
        depth = 10**6 if attrs.get("layer", "final") == "final" else attrs.get("layer_index", 0)
        return first[network(sets[k])], depth, k
    return sorted(range(len(sets)), key=place)


def _names(paths: list[str], sets) -> list[str]:
    """``backbone@weights`` per file (``:layer`` for a stage's file); the file name where
    two would read the same."""
    names = [f"{d.provenance.get('backbone')}@{str(d.provenance.get('weights'))[:19]}"
             + ("" if d.provenance.get("layer", "final") == "final"
                else f":{d.provenance['layer']}") for d in sets]
    return [name if names.count(name) == 1 else Path(path).stem for name, path in zip(names, paths)]
