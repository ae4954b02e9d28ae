"""Features with ids and labels, for FAISS, pandas or FiftyOne users.

- ``npy``: ``<stem>.features.npy`` (float32, n x d), ``<stem>.ids.npy`` (unicode,
  no pickle needed) and ``<stem>.labels.csv`` (id and one column per task);
- ``parquet``: ``<stem>.parquet``, one row per image: ``id``, one column per
  task and ``embedding`` (a fixed-size list of float32), with the feature
  file's attributes in the schema metadata (key ``featbank``).
"""
from __future__ import annotations

import csv
import json
from datetime import datetime, timezone

import numpy as np

from featbank.analysis.common import describe, output_folder, read_entry, single_feature_file
from featbank.analysis.config import ExportConfig
from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path, atomic_write_json
from featbank.data.collection import Collection


def export(collection: Collection, config: ExportConfig, *, warn=print) -> dict:
    """Write one feature file in ``config.format``; returns the JSON report (files written)."""
    entry = single_feature_file(config.cache_root, collection.name, config.backbone,
                                config.weights, warn=warn)
    if config.format == "parquet":
        _require_pyarrow()
    data = read_entry(entry)
    labels = {t: [by_id.get(i) for i in data.ids] for t, by_id in collection.labels_by_id().items()}
    folder = output_folder(config.cache_root, collection.name, "export")
    stem = entry.path.stem
    if config.format == "npy":
        files = _write_npy(folder, stem, data.ids, data.X, labels)
    else:
        files = _write_parquet(folder / f"{stem}.parquet", data.ids, data.X, labels,
                               data.provenance)
    report = {"command": "export", "collection": collection.name, **describe(entry),
              "format": config.format, "files": [str(f) for f in files],
              "tasks": collection.tasks, "n_rows": len(data.ids),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(folder / f"{stem}.{config.format}.json", report)
    report["json"] = str(folder / f"{stem}.{config.format}.json")
    return report


def _write_npy(folder, stem, ids, features, labels):
    paths = [folder / f"{stem}.features.npy", folder / f"{stem}.ids.npy",
             folder / f"{stem}.labels.csv"]
    for path, array in zip(paths, (features.astype(np.float32, copy=False), np.array(ids, dtype=str))):
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    with atomic_path(paths[2]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", *labels])
        writer.writerows(zip(ids, *([v or "" for v in column] for column in labels.values())))
    return paths


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise BadInput("--format parquet needs pyarrow: pip install 'featbank[analysis]' "
                          "(or use --format npy)") from None


def _write_parquet(path, ids, features, labels, attrs: dict):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, d = features.shape
    embedding = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(features, dtype=np.float32).reshape(-1)), d)
    columns = {"id": pa.array(ids, pa.string()),
               **{task: pa.array(values, pa.string()) for task, values in labels.items()},
               "embedding": embedding}
    table = pa.table(columns).replace_schema_metadata(
        {"featbank": json.dumps(attrs, default=str)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return [path]
