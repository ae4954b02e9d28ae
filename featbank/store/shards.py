"""The shards of a feature file: blocks of rows, each written once and never changed.

``<file>.h5.shards/<NNNNNN>-<token>.h5`` holds, row by row: ``ids``, ``features``,
``row_digest`` (uint64, a blake2b of the id and the vector's bytes) and the stamp of
the image file the row was computed from (``file_size``, ``file_mtime_ns``,
``file_sha256``; :class:`featbank.core.hashing.Stamp`). Its attributes give its
``format`` and the ``provenance`` (JSON) of the file it was written for, so shards
alone are enough to rebuild a lost main file (:mod:`featbank.store.repair`).

A shard's name is never reused (the number grows, the token is random): a layout
that names a shard always means the rows written under that name. Shards of the
first format (``000000.h5``, ``features`` only) are read as they are and joined into
one of this format by the next run that writes to their file.
"""
from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featbank.core.hashing import UNKNOWN, Stamp

SHARD_FORMAT = "featbank-shard/2"
LAYOUT_PREFIX = "layout-"
_SHARD_NAME = re.compile(r"^(\d{6,})(?:-[0-9a-f]{8})?\.h5$")
SHA_DTYPE = np.dtype("S64")  # a sha256 in hex; b"" when not known


def shard_number(name: str) -> int | None:
    """The number of a shard's file name (``000012-1f3a9c0d.h5`` -> 12); None for others."""
    match = _SHARD_NAME.match(name)
    return int(match.group(1)) if match else None


def shard_files(folder: Path) -> list[Path]:
    """The shards in ``folder``, oldest first (layouts and temporary files left out)."""
    found = [p for p in folder.glob("*.h5") if shard_number(p.name) is not None] \
        if folder.is_dir() else []
    return sorted(found, key=lambda p: shard_number(p.name))


def new_shard_name(folder: Path) -> str:
    """A name no shard of ``folder`` has had: the next number and a random token."""
    numbers = [shard_number(p.name) for p in shard_files(folder)]
    return f"{max(numbers, default=-1) + 1:06d}-{uuid.uuid4().hex[:8]}.h5"


def new_layout_name() -> str:
    return f"{LAYOUT_PREFIX}{uuid.uuid4().hex[:12]}.h5"


def row_digests(ids: list[bytes], features: np.ndarray) -> np.ndarray:
    """One uint64 per row: a blake2b of its id and its vector's bytes (what the file's
    ``content_sha256`` is made of; a row digest changes when either does)."""
    rows = np.ascontiguousarray(features)
    return np.fromiter((int.from_bytes(hashlib.blake2b(i + b"\0" + r.tobytes(), digest_size=8)
                                       .digest(), "little") for i, r in zip(ids, rows)),
                       dtype=np.uint64, count=len(ids))


@dataclass
class Stamps:
    """The stamps of a block of rows, as arrays (the layout of a shard and a main file)."""

    size: np.ndarray  # int64
    mtime_ns: np.ndarray  # int64
    sha256: np.ndarray  # S64

    @classmethod
    def of(cls, stamps: list[Stamp | None]) -> "Stamps":
        stamps = [s or UNKNOWN for s in stamps]
        return cls(np.array([s.size for s in stamps], dtype=np.int64),
                   np.array([s.mtime_ns for s in stamps], dtype=np.int64),
                   np.array([s.sha256.encode() for s in stamps], dtype=SHA_DTYPE))

    @classmethod
    def unknown(cls, n: int) -> "Stamps":
        return cls(np.full(n, -1, np.int64), np.full(n, -1, np.int64), np.zeros(n, SHA_DTYPE))

    @classmethod
    def join(cls, blocks: list["Stamps"]) -> "Stamps":
        if not blocks:
            return cls.unknown(0)
        return cls(*(np.concatenate([getattr(b, k) for b in blocks])
                     for k in ("size", "mtime_ns", "sha256")))

    def take(self, rows) -> "Stamps":
        return Stamps(self.size[rows], self.mtime_ns[rows], self.sha256[rows])

    def __len__(self) -> int:
        return len(self.size)

    def stamp(self, k: int) -> Stamp:
        return Stamp(int(self.size[k]), int(self.mtime_ns[k]), self.sha256[k].decode())


class ShardWriter:
    """A new shard: vectors streamed into a resizable ``features``; ids, digests and stamps
    kept in memory and written when it closes (a shard is read back whole, never grown)."""

    def __init__(self, path: Path, dim: int, dtype: np.dtype, provenance: dict):
        self.path = Path(path)
        self.file = h5py.File(self.path, "w")
        self.file.attrs["format"] = SHARD_FORMAT
        self.file.attrs["provenance"] = json.dumps(provenance, default=str)
        self.features = self.file.create_dataset(
            "features", shape=(0, dim), maxshape=(None, dim), dtype=dtype,
            chunks=(max(1, min(256, (1 << 20) // (dim * np.dtype(dtype).itemsize))), dim))
        self.ids: list[bytes] = []
        self._digests: list[np.ndarray] = []
        self._stamps: list[Stamps] = []

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, ids: list[bytes], features: np.ndarray, stamps: Stamps) -> None:
        """Append every row given (the caller decides which rows a file takes)."""
        if not ids:
            return
        features = features.astype(self.features.dtype, copy=False)
        n = len(self.ids)
        self.features.resize(n + len(ids), axis=0)
        self.features[n:] = features
        self.ids.extend(ids)
        self._digests.append(row_digests(ids, features))
        self._stamps.append(stamps)

    @property
    def digests(self) -> np.ndarray:
        return np.concatenate(self._digests) if self._digests else np.zeros(0, np.uint64)

    @property
    def stamps(self) -> Stamps:
        return Stamps.join(self._stamps)

    def close(self) -> None:
        if not self.file.id.valid:
            return
        stamps = self.stamps
        self.file.create_dataset("ids", data=fixed_utf8(np.array(self.ids, dtype=bytes)))
        self.file.create_dataset("row_digest", data=self.digests)
        self.file.create_dataset("file_size", data=stamps.size)
        self.file.create_dataset("file_mtime_ns", data=stamps.mtime_ns)
        self.file.create_dataset("file_sha256", data=stamps.sha256)
        self.file.close()


@dataclass
class ShardRows:
    """What a shard of this format holds, without its vectors (for rebuilding a main file)."""

    name: str
    ids: np.ndarray  # bytes
    digests: np.ndarray
    stamps: Stamps
    provenance: dict


def read_shard_rows(path: Path) -> ShardRows | None:
    """The ids, digests, stamps and provenance of a shard; None for a shard of the first
    format (no ids of its own) or one that does not read."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != SHARD_FORMAT or "ids" not in f:
                return None
            n = f["features"].shape[0]
            rows = ShardRows(path.name, np.array(f["ids"][:], dtype=bytes), f["row_digest"][:],
                             Stamps(f["file_size"][:], f["file_mtime_ns"][:],
                                    np.array(f["file_sha256"][:], dtype=SHA_DTYPE)),
                             json.loads(f.attrs["provenance"]))
    except (OSError, KeyError, ValueError):
        return None
    return rows if len(rows.ids) == n == len(rows.digests) else None


def fixed_utf8(ids: np.ndarray) -> np.ndarray:
    """Ids as fixed-length UTF-8 strings: written and read in one copy, unlike
    variable-length ones; ``f["ids"].asstr()[:]`` reads both kinds."""
    return ids.astype(h5py.string_dtype("utf-8", max(1, ids.dtype.itemsize)))
