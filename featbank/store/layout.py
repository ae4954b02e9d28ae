"""What a feature file's main file says, read and written whole: its ids and their image
stamps, its skipped images, and which shard rows its ``features`` map.

The main file ``<file>.h5`` holds ``ids``, ``file_size`` and ``file_mtime_ns`` (the
images' stamps, cheap to compare on every run), the skipped lists, the provenance
attributes, ``content_sha256`` (what the rows hold: a digest of the ids and the rows'
digests, in order) and ``layout``. Its ``features``, ``row_digest`` and ``file_sha256``
are HDF5 external links to a layout file in the shards folder,
``<file>.h5.shards/layout-<token>.h5``, whose virtual datasets map runs of shard rows
(``segments``: shard, first row, end). So plain h5py reads ``f["features"][:]`` as one
(N, D) array, and a main file copied without its shards fails loudly ("unable to open
external file") instead of reading NaN. Layouts, like shards, are written once under a
name never reused.

Files of the earlier formats read as they are: version 1 (a virtual ``features`` in the
main file over shards of the first format) and version 0 (a plain ``features`` dataset);
the next run that writes to one joins its rows into a shard of this format.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featbank.core.fileio import atomic_path
from featbank.store.shards import SHA_DTYPE, fixed_utf8, new_layout_name, shard_files

FORMAT = "featbank-features/2"
LINKED = ("features", "row_digest", "file_sha256")  # datasets the layout file holds
# Datasets a main file may hold beside its rows, kept by every write: the ids of the
# collection's images a fine-tuned trunk was trained and validated on (see
# featbank.classification.cells: its features are never tested on them).
EXTRA = ("trunk_fit_ids",)
MAX_SHARDS = 32  # past this many shards the next run joins them into one
MAX_SEGMENTS = 256  # runs of shard rows a layout maps (rows dropped mid-shard split runs)
SHARD_GRACE = 600  # seconds an unnamed shard or layout stays (readers of the previous main)
_STR = h5py.string_dtype("utf-8")


def shards_folder(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".shards")


@dataclass
class Mapping:
    """Which shard row each row of a file is: ``shards[shard_of[k]]``, row ``pos[k]``."""

    shards: list[str]
    shard_of: np.ndarray  # int32
    pos: np.ndarray  # int64

    @classmethod
    def empty(cls) -> "Mapping":
        return cls([], np.zeros(0, np.int32), np.zeros(0, np.int64))

    @classmethod
    def whole(cls, shard: str, rows) -> "Mapping":
        rows = np.asarray(rows, dtype=np.int64)
        return cls([shard], np.zeros(len(rows), np.int32), rows)

    @classmethod
    def from_segments(cls, segments) -> "Mapping":
        shards = list(dict.fromkeys(name for name, _, _ in segments))
        number = {name: k for k, name in enumerate(shards)}
        shard_of = [np.full(stop - start, number[name], np.int32) for name, start, stop in segments]
        pos = [np.arange(start, stop, dtype=np.int64) for _, start, stop in segments]
        if not segments:
            return cls.empty()
        return cls(shards, np.concatenate(shard_of), np.concatenate(pos))

    def segments(self) -> list[tuple[str, int, int]]:
        """Runs of consecutive rows of one shard, in file order."""
        if not len(self.pos):
            return []
        breaks = np.flatnonzero((np.diff(self.shard_of) != 0) | (np.diff(self.pos) != 1)) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(self.pos)]])
        return [(self.shards[int(self.shard_of[a])], int(self.pos[a]), int(self.pos[b - 1]) + 1)
                for a, b in zip(starts, ends)]

    def take(self, rows) -> "Mapping":
        return Mapping(self.shards, self.shard_of[rows], self.pos[rows])

    def then(self, other: "Mapping") -> "Mapping":
        """This file's rows followed by ``other``'s."""
        shards = list(dict.fromkeys(self.shards + other.shards))
        renumber = np.array([shards.index(s) for s in other.shards] or [0], dtype=np.int32)
        return Mapping(shards, np.concatenate([self.shard_of, renumber[other.shard_of]]),
                       np.concatenate([self.pos, other.pos]))

    def used(self) -> set[str]:
        return {self.shards[k] for k in np.unique(self.shard_of)}


@dataclass
class Index:
    """A main file in memory, without vectors: rows (ids, stamps, where they are), skipped.

    version : 2 (this format), 1 (virtual ``features`` in the main file), 0 (plain).
    """

    ids: np.ndarray  # UTF-8 bytes: comparing and rewriting 100k of them is 10x cheaper
    size: np.ndarray  # the images' stamps (file_size, file_mtime_ns)
    mtime_ns: np.ndarray
    mapping: Mapping | None  # None for a version-0 file
    skipped: dict[str, str] = field(default_factory=dict)
    skipped_stamps: dict[str, tuple[int, int]] = field(default_factory=dict)
    created: str | None = None
    version: int = 2
    layout: str | None = None
    # Datasets of the main file beside the rows, carried from write to write: EXTRA.
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> "Index":
        return cls(np.array([], dtype=bytes), np.zeros(0, np.int64), np.zeros(0, np.int64),
                   Mapping.empty())

    def __len__(self) -> int:
        return len(self.ids)

    def compacts(self) -> bool:
        """Whether the next write joins every row into one shard: a file of an earlier
        format, past ``MAX_SHARDS`` shards, or past ``MAX_SEGMENTS`` runs of rows."""
        if self.version < 2 and len(self.ids):
            return True
        return (len(self.mapping.used()) + 1 > MAX_SHARDS
                or len(self.mapping.segments()) > MAX_SEGMENTS)

    @classmethod
    def read(cls, path: Path) -> "Index":
        """The main file at ``path`` (a whole one: :mod:`featbank.store.health` checks)."""
        with h5py.File(path, "r") as f:
            ids = np.array(f["ids"][:], dtype=bytes)
            n = len(ids)
            size = f["file_size"][:] if "file_size" in f else np.full(n, -1, np.int64)
            mtime = f["file_mtime_ns"][:] if "file_mtime_ns" in f else np.full(n, -1, np.int64)
            skipped = dict(zip(f["skipped_ids"].asstr()[:], f["skipped_reasons"].asstr()[:]))
            stamps = {}
            if "skipped_size" in f:
                stamps = {i: (int(s), int(m)) for i, s, m in zip(
                    skipped, f["skipped_size"][:], f["skipped_mtime_ns"][:])}
            version, layout = 0, None
            if f.attrs.get("format") == FORMAT:
                version, layout = 2, str(f.attrs["layout"])
                mapping = Mapping.from_segments(read_segments(shards_folder(path) / layout))
            elif f["features"].is_virtual:
                version = 1
                mapping = Mapping.from_segments(
                    [(Path(s.file_name).name, *_bounds(s.src_space))
                     for s in f["features"].virtual_sources()])
            else:
                mapping = None
            extra = {name: np.array(f[name][:], dtype=bytes) for name in EXTRA if name in f}
            return cls(ids, size.astype(np.int64), mtime.astype(np.int64), mapping, skipped,
                       stamps, f.attrs.get("created"), version, layout, extra)

    def sha256(self, path: Path, rows) -> np.ndarray:
        """The image sha256 stored for ``rows`` (b"" where not known)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.version < 2 or not len(rows):
            return np.zeros(len(rows), SHA_DTYPE)
        order = np.argsort(rows)
        with h5py.File(path, "r") as f:
            found = np.array(f["file_sha256"][rows[order]], dtype=SHA_DTYPE)
        out = np.empty(len(rows), SHA_DTYPE)
        out[order] = found
        return out

    def write(self, path: Path, attrs: dict, *, previous: "Index | None" = None,
              grace: float | None = None) -> None:
        """This state as the file at ``path``: a new layout, then a new main file, each
        whole or absent; shards and layouts no file names any more go after ``grace``
        seconds (default :data:`SHARD_GRACE`)."""
        folder = shards_folder(path)
        folder.mkdir(parents=True, exist_ok=True)
        dim, dtype = int(attrs["feature_dim"]), np.dtype(attrs["dtype"])
        layout = new_layout_name()
        segments = self.mapping.segments()
        write_layout(folder / layout, segments, dim, dtype)
        digests = read_digests(folder, segments)
        main = {k: v for k, v in attrs.items() if v is not None}
        main.update(format=FORMAT, layout=layout, n_rows=len(self.ids),
                    content_sha256=content_digest(self.ids, digests))
        main["created"] = self.created or attrs.get("created")
        main = {k: v for k, v in main.items() if v is not None}
        skipped = list(self.skipped)
        stamps = [self.skipped_stamps.get(i, (-1, -1)) for i in skipped]
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as out:
                out.create_dataset("ids", data=fixed_utf8(self.ids))
                out.create_dataset("file_size", data=self.size.astype(np.int64))
                out.create_dataset("file_mtime_ns", data=self.mtime_ns.astype(np.int64))
                for name in LINKED:
                    out[name] = h5py.ExternalLink(f"{folder.name}/{layout}", f"/{name}")
                out.create_dataset("skipped_ids", data=skipped, dtype=_STR)
                out.create_dataset("skipped_reasons", data=[self.skipped[i] for i in skipped],
                                   dtype=_STR)
                out.create_dataset("skipped_size", data=np.array([s for s, _ in stamps], np.int64))
                out.create_dataset("skipped_mtime_ns",
                                   data=np.array([m for _, m in stamps], np.int64))
                for name, values in self.extra.items():
                    out.create_dataset(name, data=fixed_utf8(np.asarray(values, dtype=bytes)))
                out.attrs.update(main)
        self.layout, self.version = layout, 2
        named = self.mapping.used() | {layout}
        superseded = set(previous.mapping.used()) | {previous.layout} \
            if previous is not None and previous.mapping is not None else set()
        drop_unnamed(folder, named, superseded - {None}, grace=grace)


def _bounds(selection) -> tuple[int, int]:
    (first, _), (last, _) = selection.get_select_bounds()
    return first, last + 1


def read_segments(layout: Path) -> list[tuple[str, int, int]]:
    with h5py.File(layout, "r") as f:
        return [tuple(s) for s in json.loads(f.attrs["segments"])]


def write_layout(path: Path, segments, dim: int, dtype: np.dtype) -> None:
    """A layout file: virtual ``features``, ``row_digest`` and ``file_sha256`` over the
    shard rows of ``segments`` (shard names relative to this file's folder)."""
    total = sum(stop - start for _, start, stop in segments)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as out:
        for name, shape, kind in (("features", (total, dim), dtype),
                                  ("row_digest", (total,), np.dtype(np.uint64)),
                                  ("file_sha256", (total,), SHA_DTYPE)):
            if total == 0:
                out.create_dataset(name, shape=shape, dtype=kind)
                continue
            layout = h5py.VirtualLayout(shape=shape, dtype=kind)
            at = 0
            for shard, start, stop in segments:
                source = h5py.VirtualSource(shard, name, shape=(_rows_of(path.parent / shard),
                                                                *shape[1:]))
                layout[at:at + stop - start] = source[start:stop]
                at += stop - start
            fill = np.nan if name == "features" else (0 if name == "row_digest" else b"")
            out.create_virtual_dataset(name, layout, fillvalue=fill)
        out.attrs["segments"] = json.dumps([list(s) for s in segments])
    os.replace(tmp, path)


def _rows_of(shard: Path) -> int:
    with h5py.File(shard, "r") as f:
        return int(f["features"].shape[0])


def read_digests(folder: Path, segments) -> np.ndarray:
    """The row digests of ``segments``, read from the shards themselves."""
    blocks = []
    for shard, start, stop in segments:
        with h5py.File(folder / shard, "r") as f:
            blocks.append(f["row_digest"][start:stop])
    return np.concatenate(blocks) if blocks else np.zeros(0, np.uint64)


def content_digest(ids: np.ndarray, digests: np.ndarray) -> str:
    """``sha256:`` of the ids and their rows' digests, in file order: equal for files
    that hold the same rows, whatever their shards."""
    digest = hashlib.sha256()
    digest.update(b"\n".join(np.asarray(ids, dtype=bytes).tolist()))
    digest.update(b"\0")
    digest.update(np.ascontiguousarray(digests, dtype="<u8").tobytes())
    return "sha256:" + digest.hexdigest()


def content_identity(path: Path) -> str:
    """What a feature file's rows hold (``sha256:``, :func:`content_digest`): recorded by
    every write of this format; for a file of an earlier format, computed from its rows
    (the same value its rows will have once written in this format)."""
    from featbank.store.shards import row_digests

    with h5py.File(path, "r") as f:
        if f.attrs.get("content_sha256"):
            return str(f.attrs["content_sha256"])
        ids = np.array(f["ids"][:], dtype=bytes)
        features = f["features"]
        digests = [row_digests(ids[a:a + 8192].tolist(), features[a:a + 8192])
                   for a in range(0, len(ids), 8192)]
    return content_digest(ids, np.concatenate(digests) if digests else np.zeros(0, np.uint64))


def drop_unnamed(folder: Path, named: set[str], superseded: set[str] = frozenset(), *,
                 grace: float | None = None) -> None:
    """Delete the shards and layouts no main file names, once they have been unnamed for
    :data:`SHARD_GRACE` seconds: a reader that opened the previous main file just before
    it was replaced still finds what it maps. ``superseded``: what the previous main file
    named, whose grace starts now."""
    now, grace = time.time(), SHARD_GRACE if grace is None else grace
    for name in superseded - named:
        if (folder / name).is_file():
            os.utime(folder / name, (now, now))
    for item in [*shard_files(folder), *folder.glob("layout-*.h5")]:
        if item.name not in named and now - item.stat().st_mtime >= grace:
            item.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
