"""The HDF5 feature cache: one file per collection x backbone x weights.

Contract (readable with plain h5py; see DESIGN.md):

- ``features``: (N, D) float32 (or float16 by option); row i belongs to ``ids[i]``;
- ``ids``: (N,) UTF-8 strings, the image path relative to the collection root;
- ``skipped_ids`` / ``skipped_reasons``: images that could not be decoded;
- attributes: ``backbone``, ``feature_dim``, ``weights`` (``imagenet``,
  ``random`` or ``sha256:<hex>``), ``input_size``, ``mean``, ``std``,
  ``resize``, ``crop_pct``, ``interpolation``, ``dtype``, ``collection``,
  ``featbank_version``, ``torch_version``, ``created``.

Crash safety: while extracting, every finished batch is written as an ``.npz``
part in ``<file>.parts/`` (written to a temporary name, then renamed, so a
part is whole or absent). Parts are merged into the HDF5 file by writing a new
file and renaming it over the old one, so a kill at any moment loses at most
the batch in flight and never leaves a half-written HDF5 file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .fileio import atomic_path, atomic_write_json

# Attributes that must agree before rows from two runs may share a file.
PROVENANCE_KEYS = ("backbone", "feature_dim", "weights", "input_size", "mean", "std",
                   "resize", "crop_pct", "interpolation", "dtype")
_STR = h5py.string_dtype("utf-8")
_CHUNK_ROWS = 1024


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def feature_path(cache_root: str | os.PathLike, collection: str, backbone: str,
                 weights: str) -> Path:
    """``<cache>/<collection>/features/<backbone>__<weights>.h5``.

    weights : ``imagenet``, ``random`` or ``sha256:<hex>`` (shortened to 12 digits).
    """
    tag = weights if ":" not in weights else "sha256-" + weights.split(":", 1)[1][:12]
    return Path(cache_root) / collection / "features" / f"{safe_name(backbone)}__{safe_name(tag)}.h5"


@dataclass
class FeatureSet:
    """What a feature file holds, read into memory."""

    ids: list[str]
    features: np.ndarray
    attrs: dict
    skipped: dict[str, str]


def read_features(path: str | os.PathLike) -> FeatureSet:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} does not exist; run extract.py first")
    with h5py.File(path, "r") as f:
        return FeatureSet(ids=list(f["ids"].asstr()[:]), features=f["features"][:],
                          attrs=_plain(dict(f.attrs)),
                          skipped=dict(zip(f["skipped_ids"].asstr()[:],
                                           f["skipped_reasons"].asstr()[:])))


def read_skipped(path: str | os.PathLike) -> dict[str, str]:
    """Undecodable image id -> reason, without reading the features."""
    with h5py.File(path, "r") as f:
        return dict(zip(f["skipped_ids"].asstr()[:], f["skipped_reasons"].asstr()[:]))


def count_rows(path: str | os.PathLike) -> int:
    with h5py.File(path, "r") as f:
        return int(f["ids"].shape[0])


def _plain(attrs: dict) -> dict:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return a == b


class FeatureFile:
    """A feature file being filled: the HDF5 file plus its pending parts."""

    def __init__(self, path: str | os.PathLike, attrs: dict):
        self.path = Path(path)
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.attrs = _plain(attrs)
        self.dtype = np.dtype(self.attrs["dtype"])
        self.dim = int(self.attrs["feature_dim"])
        self._next_part: int | None = None  # number of the next part; read once from disk

    # -- reading what is done -------------------------------------------------
    def check_compatible(self) -> None:
        """Refuse to mix rows made with other weights or preprocessing."""
        found = []
        if self.path.is_file():
            with h5py.File(self.path, "r") as f:
                found.append((self.path, _plain(dict(f.attrs))))
        provenance = self.parts / "provenance.json"
        if provenance.is_file():
            found.append((self.parts, json.loads(provenance.read_text())))
        for where, attrs in found:
            for key in PROVENANCE_KEYS:
                if not _same(attrs.get(key), self.attrs[key]):
                    raise ValueError(
                        f"{where} was written with {key}={attrs.get(key)!r}, not "
                        f"{self.attrs[key]!r}; delete it (or use another --cache) to re-extract")

    def done_ids(self) -> set[str]:
        """Ids already extracted or known to be undecodable (file and parts)."""
        done: set[str] = set()
        if self.path.is_file():
            with h5py.File(self.path, "r") as f:
                done.update(f["ids"].asstr()[:])
                done.update(f["skipped_ids"].asstr()[:])
        for part in self._part_files():
            with np.load(part) as data:
                done.update(data["ids"].tolist())
                done.update(data["skipped_ids"].tolist())
        return done

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("*.npz")) if self.parts.is_dir() else []

    # -- writing --------------------------------------------------------------
    def add_batch(self, ids: list[str], features: np.ndarray,
                  skipped: dict[str, str] | None = None) -> None:
        """Persist one batch as a part: features (len(ids), D), skipped id -> reason."""
        if features.shape != (len(ids), self.dim):
            raise AssertionError(f"batch of shape {features.shape} for {len(ids)} ids")
        if not self.parts.is_dir():
            self.parts.mkdir(parents=True)
            atomic_write_json(self.parts / "provenance.json", self.attrs)
        if self._next_part is None:
            existing = self._part_files()
            self._next_part = int(existing[-1].stem) + 1 if existing else 0
        number, self._next_part = self._next_part, self._next_part + 1
        skipped = skipped or {}
        with atomic_path(self.parts / f"{number:08d}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array(ids, dtype=str),
                     features=features.astype(self.dtype, copy=False),
                     skipped_ids=np.array(list(skipped), dtype=str),
                     skipped_reasons=np.array(list(skipped.values()), dtype=str))

    def merge(self) -> int:
        """Fold pending parts into the HDF5 file (atomically); returns rows added."""
        parts = self._part_files()
        added = 0
        if parts or not self.path.is_file():
            with atomic_path(self.path) as tmp:
                added = self._write(parts, tmp)
        self._drop_parts()
        return added

    def _drop_parts(self) -> None:
        if self.parts.is_dir():
            shutil.rmtree(self.parts)
        self._next_part = None

    def _write(self, parts: list[Path], target: Path) -> int:
        """The old file's rows then the parts' rows, into ``target``."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(target, "w") as out:
            writer = _RowWriter(out, self.dim, self.dtype)
            attrs = dict(self.attrs)
            if self.path.is_file():
                with h5py.File(self.path, "r") as old:
                    writer.copy_from(old)
                    attrs["created"] = old.attrs.get("created", attrs.get("created"))
            before = writer.n
            for part in parts:
                with np.load(part) as data:
                    writer.append(data["ids"].tolist(), data["features"],
                                  dict(zip(data["skipped_ids"].tolist(),
                                           data["skipped_reasons"].tolist())))
            writer.finish()
            out.attrs.update({k: v for k, v in attrs.items() if v is not None})
            out.attrs["n_rows"] = writer.n
            return writer.n - before


class _RowWriter:
    """Appends rows to resizable ``features`` / ``ids``; drops ids seen before.

    (A part may repeat rows already merged when a run died between the rename of
    the new file and the removal of its parts.)
    """

    def __init__(self, out: h5py.File, dim: int, dtype: np.dtype):
        self.features = out.create_dataset("features", shape=(0, dim), maxshape=(None, dim),
                                           dtype=dtype, chunks=(min(_CHUNK_ROWS, 256), dim))
        self.ids = out.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=_STR,
                                      chunks=(_CHUNK_ROWS,))
        self.out = out
        self.seen: set[str] = set()
        self.skipped: dict[str, str] = {}
        self.n = 0

    def append(self, ids: list[str], features: np.ndarray, skipped: dict[str, str]) -> None:
        keep = [k for k, i in enumerate(ids) if i not in self.seen]
        if keep:
            rows = slice(self.n, self.n + len(keep))
            self.features.resize(self.n + len(keep), axis=0)
            self.ids.resize(self.n + len(keep), axis=0)
            self.features[rows] = features[keep]
            self.ids[rows] = [ids[k] for k in keep]
            self.n += len(keep)
            self.seen.update(ids[k] for k in keep)
        for image_id, reason in skipped.items():
            self.skipped.setdefault(image_id, reason)

    def copy_from(self, old: h5py.File) -> None:
        total = old["ids"].shape[0]
        for start in range(0, total, _CHUNK_ROWS * 8):
            stop = min(total, start + _CHUNK_ROWS * 8)
            self.append(list(old["ids"].asstr()[start:stop]), old["features"][start:stop], {})
        self.skipped.update(zip(old["skipped_ids"].asstr()[:], old["skipped_reasons"].asstr()[:]))

    def finish(self) -> None:
        self.out.create_dataset("skipped_ids", data=list(self.skipped), dtype=_STR)
        self.out.create_dataset("skipped_reasons", data=list(self.skipped.values()), dtype=_STR)
