"""Features with ids and labels, for FAISS, pandas or FiftyOne users.

- ``npy``: ``<stem>.features.npy`` (float32, n x d), ``<stem>.ids.npy`` (unicode,
  no pickle needed) and ``<stem>.labels.csv`` (id and one column per task);
- ``parquet``: ``<stem>.parquet``, one row per image: ``id``, one column per
  task and ``embedding`` (a fixed-size list of float32), with the feature
  file's attributes in the schema metadata (key ``featbank``);
- ``hdf5``: ``<stem>.h5``, one self-contained file of the feature-file contract
  to hand on (``features`` a plain dataset, no shards; the ids, image stamps,
  skipped images and attributes as in the cache) with the labels under
  ``labels/<task>``: plain h5py reads it anywhere, and featbank reads it as a
  feature file.

Both are written a chunk of rows at a time (a Parquet row group per chunk; the
``.npy`` files through memory maps), so a file of millions of rows is exported
without its matrix in memory.
"""
from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from featbank.analysis.common import describe, output_folder, single_feature_file
from featbank.analysis.config import ExportConfig
from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path, atomic_write_json
from featbank.data.collection import Collection
from featbank.store.features import iter_rows
from featbank.store.provenance import plain_attrs

CHUNK = 65_536  # rows written at a time


def export(collection: Collection, config: ExportConfig, *, warn=print) -> dict:
    """Write one feature file in ``config.format``; returns the JSON report (files written)."""
    entry = single_feature_file(config.cache_root, collection.name, config.backbone,
                                config.weights, warn=warn)
    folder = output_folder(config.cache_root, collection.name, "export")
    stem = entry.path.stem
    files = write_export(entry.path, folder / stem, config.format, collection.labels_by_id())
    report = {"command": "export", "collection": collection.name, **describe(entry),
              "format": config.format, "files": [str(f) for f in files],
              "tasks": collection.tasks, "n_rows": entry.n_rows,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(folder / f"{stem}.{config.format}.json", report)
    report["json"] = str(folder / f"{stem}.{config.format}.json")
    return report


def write_export(path: Path, stem: Path, fmt: str,
                 labels: dict[str, dict[str, str | None]]) -> list[Path]:
    """Stream the feature file ``path`` to ``<stem>.*`` files in ``fmt`` (npy or parquet);
    ``labels``: task -> {id -> label}."""
    if fmt == "parquet":
        _require_pyarrow()
        return _write_parquet(path, stem.with_name(f"{stem.name}.parquet"), labels)
    if fmt == "hdf5":
        return _write_hdf5(path, stem.with_name(f"{stem.name}.h5"), labels)
    return _write_npy(path, stem, labels)


def _write_hdf5(path: Path, target: Path, labels) -> list[Path]:
    """One file with every dataset of ``path`` copied in, ``features`` streamed."""
    text = h5py.string_dtype("utf-8")
    with h5py.File(path, "r") as f, atomic_path(target) as tmp, h5py.File(tmp, "w") as out:
        rows, dim = f["features"].shape
        ids = f["ids"].asstr()[:]
        out.create_dataset("ids", data=f["ids"][:], dtype=f["ids"].dtype)
        features = out.create_dataset("features", shape=(rows, dim), dtype=f["features"].dtype,
                                      chunks=(max(1, min(rows, 1024)), dim))
        for start in range(0, rows, CHUNK):
            features[start:start + CHUNK] = f["features"][start:start + CHUNK]
        for name in ("file_size", "file_mtime_ns", "file_sha256", "skipped_ids",
                     "skipped_reasons", "skipped_size", "skipped_mtime_ns"):
            if name in f:
                out.create_dataset(name, data=f[name][:], dtype=f[name].dtype)
        group = out.create_group("labels")
        for task, by_id in labels.items():
            group.create_dataset(task, data=[by_id.get(i) or "" for i in ids], dtype=text)
        attrs = {k: v for k, v in f.attrs.items() if k not in ("format", "layout")}
        out.attrs.update({**attrs, "exported_from": path.name})
    return [target]


def _shape(path: Path) -> tuple[int, int, int, dict]:
    """(rows, dim, longest id in bytes, attributes) of a feature file."""
    with h5py.File(path, "r") as f:
        rows, dim = f["features"].shape
        return rows, dim, max(1, f["ids"].dtype.itemsize), plain_attrs(dict(f.attrs))


def _write_npy(path: Path, stem: Path, labels) -> list[Path]:
    rows, dim, id_bytes, _ = _shape(path)
    paths = [stem.with_name(f"{stem.name}.{suffix}")
             for suffix in ("features.npy", "ids.npy", "labels.csv")]
    with atomic_path(paths[0]) as features_tmp, atomic_path(paths[1]) as ids_tmp, \
            atomic_path(paths[2]) as labels_tmp, \
            open(labels_tmp, "w", newline="", encoding="utf-8") as fh:
        features = np.lib.format.open_memmap(features_tmp, mode="w+", dtype=np.float32,
                                             shape=(rows, dim))
        ids_out = np.lib.format.open_memmap(ids_tmp, mode="w+", dtype=f"<U{id_bytes}",
                                            shape=(rows,))
        writer = csv.writer(fh)
        writer.writerow(["id", *labels])
        start = 0
        for ids, X in iter_rows(path, CHUNK):
            features[start:start + len(ids)] = X
            ids_out[start:start + len(ids)] = ids
            writer.writerows([i, *(by_id.get(i) or "" for by_id in labels.values())]
                             for i in ids)
            start += len(ids)
        features.flush()
        ids_out.flush()
        del features, ids_out
    return paths


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise BadInput("--format parquet needs pyarrow: pip install 'featbank[analysis]' "
                          "(or use --format npy)") from None


def _write_parquet(path: Path, target: Path, labels) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, dim, _, attrs = _shape(path)
    schema = pa.schema([("id", pa.string()), *((task, pa.string()) for task in labels),
                        ("embedding", pa.list_(pa.float32(), dim))],
                       metadata={"featbank": json.dumps(attrs, default=str)})
    with atomic_path(target) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for ids, X in iter_rows(path, CHUNK):
            embedding = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), dim)
            columns = [pa.array(ids, pa.string()),
                       *(pa.array([by_id.get(i) for i in ids], pa.string())
                         for by_id in labels.values()), embedding]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    return [target]
