"""Filling a feature file: parts while a run goes, a new shard and main file at its end.

Rows live in shards (:mod:`featbank.store.shards`), written once; the main file says
which shard rows are the file's rows (:mod:`featbank.store.layout`). Adding images
writes one new shard and a small main file, never the vectors already stored; past
``MAX_SHARDS`` shards (or ``MAX_SEGMENTS`` runs of rows) the run that writes joins
every row into one shard as it writes its own.

Which rows a file takes: every row carries the stamp of its image (size, mtime,
sha256; :class:`featbank.core.hashing.Stamp`). A new row for an id the file already
holds replaces the stored one when its image's stamp differs (the image changed),
and is dropped when it is the same (a run killed after its merge folds its parts
again); within a run the first row of an id stands unless a later one has another
stamp. An undecodable image whose stamp changed takes its row out of the file.
:meth:`FeatureWriter.remove` takes out the rows of images that left the
collection, :meth:`FeatureWriter.refresh` records new stamps of images whose bytes
did not change (a copy, a touch).

Concurrency: a run that writes a file holds its lock (``.locks/<file>.lock``, the
``filelock`` package) from reading what is done to the last write, so a second run
on the same file waits, then finds the work done.

Crash safety: while extracting, every finished batch is written as an ``.npz`` part
in ``<file>.parts/`` (written to a temporary name, then renamed, so a part is whole
or absent) and appended to the run's live shard. At the end the live shard is
renamed into place, then a new layout and a new main file are written, each whole or
absent: a kill at any moment loses at most the batch in flight; the next run folds
the parts in (the live shard of a killed run is a ``.tmp`` it removes).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path, atomic_write_json
from featbank.core.hashing import Stamp
from featbank.store.admission import Admission
from featbank.store.layout import Index, Mapping, shards_folder
from featbank.store.provenance import plain_attrs, provenance_conflict
from featbank.store.shards import SHA_DTYPE, ShardWriter, Stamps, new_shard_name

_CHUNK_ROWS = 8192  # rows copied at a time when a run joins the stored rows into its shard
# Where --force-new keeps a feature file it replaces: <features>/replaced/<time>/
REPLACED = "replaced"


@dataclass
class Stored:
    """What a feature file holds, for deciding what a run must compute: each row's id
    and image stamp (size and mtime; the sha256 is read for the rows that need it), and
    the undecodable images with the stamp they had."""

    index: Index
    path: Path

    @property
    def rows(self) -> dict[str, int]:
        """id -> row."""
        return {i.decode(): k for k, i in enumerate(self.index.ids.tolist())}

    def stamp(self, row: int) -> Stamp:
        return Stamp(int(self.index.size[row]), int(self.index.mtime_ns[row]))

    def sha256(self, rows: list[int]) -> list[str]:
        return [s.decode() for s in self.index.sha256(self.path, rows).tolist()]

    @property
    def skipped(self) -> dict[str, Stamp]:
        stamps = self.index.skipped_stamps
        return {i: Stamp(*stamps.get(i, (-1, -1))) for i in self.index.skipped}


def lock_of(path: Path) -> Path:
    """The lock of the feature file at ``path`` (``.locks/<file>.lock`` beside it): one
    writer at a time, across processes. Lock files stay (deleting one another process
    may hold is unsafe), so they live out of sight, one small file per feature file ever
    begun."""
    locks = Path(path).parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / (Path(path).name + ".lock")


class FeatureWriter:
    """A feature file being filled: the HDF5 file plus its pending parts."""

    def __init__(self, path: str | os.PathLike, attrs: dict, *,
                 extra: dict[str, list[str]] | None = None):
        """extra : datasets of the main file beside the rows (``layout.EXTRA``), written
        by every merge of this writer; without it, those the file holds are kept."""
        self.path = Path(path)
        self.extra = {k: np.array([v.encode() for v in values], dtype=bytes)
                      for k, values in (extra or {}).items()}
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.attrs = plain_attrs(attrs)
        self.dtype = np.dtype(self.attrs["dtype"])
        self.dim = int(self.attrs["feature_dim"])
        self._next_part: int | None = None  # number of the next part; read once from disk
        self._live: _ShardBuild | None = None  # this run's rows, ready to become its shard
        self._removed: set[bytes] = set()  # ids to take out at the next merge
        self._refreshed: dict[bytes, tuple[int, int]] = {}  # id -> new (size, mtime)
        self._prune = False  # join the rows into one shard at the next merge, and free the rest

    # -- reading what is done -------------------------------------------------
    def stored_attrs(self) -> list[tuple[Path, dict]]:
        """What rows already made say about themselves: the main file's attributes and a
        killed run's parts' (``provenance.json``), each with where it was read."""
        found = []
        if self.path.is_file():
            with h5py.File(self.path, "r") as f:
                found.append((self.path, plain_attrs(dict(f.attrs))))
        provenance = self.parts / "provenance.json"
        if provenance.is_file():
            found.append((self.parts, json.loads(provenance.read_text())))
        return found

    def check_compatible(self) -> None:
        """Refuse to mix rows made otherwise (weights, preprocessing, decoding, precision,
        storage, library releases) into one file, in one line naming the key."""
        for where, attrs in self.stored_attrs():
            conflict = provenance_conflict(attrs, self.attrs)
            if conflict:
                key, was, now = conflict
                raise BadInput(
                    f"{where} holds rows made with {key}={was!r}; this run would make them with "
                    f"{key}={now!r}. Run with the settings the file was made with, or start a "
                    f"new file with --force-new (the old one is kept in {REPLACED}/)")

    def set_aside(self) -> Path | None:
        """Move the file, its shards and a killed run's parts to ``replaced/<time>/`` beside
        it (kept whole and readable, never deleted) so that a new file can start; returns
        where they went, or None when there was nothing."""
        present = [p for p in (self.path, self.shards, self.parts) if p.exists()]
        if not present:
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.path.parent / REPLACED / stamp
        target.mkdir(parents=True)
        for path in present:  # relative shard paths stay valid: they move together
            os.replace(path, target / path.name)
        self._next_part, self._live = None, None
        return target

    def stored(self) -> Stored:
        """The file's rows and skipped images as stored (parts not included: a run merges
        a killed run's parts first)."""
        index = Index.read(self.path) if self.path.is_file() else Index.empty()
        return Stored(index, self.path)

    @property
    def lock_path(self) -> Path:
        return lock_of(self.path)

    @property
    def shards(self) -> Path:
        return shards_folder(self.path)

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("*.npz")) if self.parts.is_dir() else []

    # -- writing --------------------------------------------------------------
    def remove(self, ids) -> None:
        """Take the rows (and skipped entries) of ``ids`` out at the next merge: images
        that left the collection. Call before the run's first batch."""
        self._removed.update(i.encode() for i in ids)

    def refresh(self, stamps: dict[str, Stamp]) -> None:
        """Record new sizes and mtimes of images whose bytes are those their rows were
        computed from (their sha256 was compared), at the next merge."""
        self._refreshed.update({i.encode(): (s.size, s.mtime_ns) for i, s in stamps.items()})

    def prune(self) -> None:
        """At the next merge, join the file's rows into one shard and delete at once the
        shards and layouts it no longer names (rows taken out or replaced leave the disk;
        without this they go with the next compaction)."""
        self._prune = True

    def add_batch(self, ids: list[str], features: np.ndarray,
                  skipped: dict[str, str] | None = None, *,
                  stamps: list[Stamp | None] | None = None,
                  skipped_stamps: dict[str, Stamp] | None = None) -> None:
        """Persist one batch as a part: features (len(ids), D), each row's image stamp
        (unknown when not given), skipped id -> reason and the skipped images' stamps."""
        if features.shape != (len(ids), self.dim):
            raise AssertionError(f"batch of shape {features.shape} for {len(ids)} ids")
        if not self.parts.is_dir():
            self.parts.mkdir(parents=True)
            atomic_write_json(self.parts / "provenance.json", self.attrs)
        if self._next_part is None:
            existing = self._part_files()
            self._next_part = int(existing[-1].stem) + 1 if existing else 0
        number, self._next_part = self._next_part, self._next_part + 1
        skipped, skipped_stamps = skipped or {}, skipped_stamps or {}
        rows = Stamps.of(stamps if stamps is not None else [None] * len(ids))
        lost = Stamps.of([skipped_stamps.get(i) for i in skipped])
        features = features.astype(self.dtype, copy=False)
        part = self.parts / f"{number:08d}.npz"
        with atomic_path(part) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array(ids, dtype=str), features=features,
                     file_size=rows.size, file_mtime_ns=rows.mtime_ns, file_sha256=rows.sha256,
                     skipped_ids=np.array(list(skipped), dtype=str),
                     skipped_reasons=np.array(list(skipped.values()), dtype=str),
                     skipped_size=lost.size, skipped_mtime_ns=lost.mtime_ns)
        if self._live is None:
            self._live = _ShardBuild(self, Index.read(self.path) if self.path.is_file()
                                     else Index.empty())
        self._live.add(part, [i.encode() for i in ids], features, rows,
                       {i.encode(): (r, int(s), int(m)) for i, r, s, m in
                        zip(skipped, skipped.values(), lost.size, lost.mtime_ns)})

    def merge(self) -> int:
        """Fold pending parts and edits into the file: one new shard (when there are rows
        to add), a new layout and a new main file; returns the change in rows.

        The parts this object wrote are already in its live shard, which then
        becomes the new shard as it is; parts left by a killed run are read back.
        """
        parts = self._part_files()
        build, self._live = self._live, None
        if build is not None and not build.holds(parts):
            build.discard()
            build = None
        if build is None:
            for stale in self.shards.glob("*.tmp") if self.shards.is_dir() else []:
                stale.unlink(missing_ok=True)  # a live shard or a write cut short by a kill
            index = Index.read(self.path) if self.path.is_file() else Index.empty()
            if parts or (index.version < 2 and len(index)) or (self._prune and len(index)):
                build = _ShardBuild(self, index)
                for part in parts:
                    build.add_part(part)
        else:
            index = build.index
        if build is None and not (self._removed or self._refreshed or self._prune):
            self._drop_parts()
            return 0
        if build is None:
            new = self._edited(index)
        else:
            new = build.finish(self.shards / new_shard_name(self.shards))
        new.extra = self.extra or index.extra
        new.write(self.path, self.attrs, previous=index, grace=0 if self._prune else None)
        self._removed, self._refreshed, self._prune = set(), {}, False
        self._drop_parts()
        return len(new) - len(index)

    def _edited(self, index: Index) -> Index:
        """``index`` with the pending removals and refreshes, no rows added."""
        keep = _kept(index.ids, self._removed)
        size, mtime = _refreshed(index, self._refreshed)
        skipped = {i: r for i, r in index.skipped.items() if i.encode() not in self._removed}
        return Index(index.ids[keep], size[keep], mtime[keep], index.mapping.take(keep),
                     skipped, {i: index.skipped_stamps[i] for i in skipped
                               if i in index.skipped_stamps}, index.created)

    def _drop_parts(self) -> None:
        if self.parts.is_dir():
            shutil.rmtree(self.parts)
        self._next_part = None


def _kept(ids: np.ndarray, removed: set[bytes]) -> np.ndarray:
    """Rows of ``ids`` not in ``removed`` (a boolean mask)."""
    if not removed or not len(ids):
        return np.ones(len(ids), dtype=bool)
    gone = np.array(sorted(removed), dtype=bytes)
    return ~np.isin(ids.astype(gone.dtype) if ids.dtype.itemsize <= gone.dtype.itemsize
                    else ids, gone)


def _refreshed(index: Index, refreshed: dict[bytes, tuple[int, int]]):
    size, mtime = index.size.copy(), index.mtime_ns.copy()
    if refreshed:
        for k, i in enumerate(index.ids.tolist()):
            if i in refreshed:
                size[k], mtime[k] = refreshed[i]
    return size, mtime


class _ShardBuild:
    """The shard a run writes: its rows appended as they come, beside the parts (which
    stay the crash-safe record), so that the merge renames it instead of reading every
    part back (at GPU speed that re-read cost a sixth of the run). When the run will
    compact (``Index.compacts``), the shard begins with the stored rows."""

    def __init__(self, out: FeatureWriter, index: Index):
        out.shards.mkdir(parents=True, exist_ok=True)
        self.index = index  # the main file when the shard began
        self.compacts = index.compacts() or (out._prune and len(index) > 0)
        self.tmp = out.shards / f"live.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        self.writer = ShardWriter(self.tmp, out.dim, out.dtype, out.attrs)
        self.removed, self.refreshed = set(out._removed), dict(out._refreshed)
        self.parts: list[Path] = []
        self.skipped: dict[bytes, tuple[str, int, int]] = {}
        size, mtime = _refreshed(index, self.refreshed)
        keep = _kept(index.ids, self.removed)
        in_shard = np.full(len(index), -1, dtype=np.int64)
        self.copied = 0
        if self.compacts:
            self.copied = self._copy(out.path, index, keep, size, mtime)
            in_shard[keep] = np.arange(self.copied)
        self.admission = Admission(index.ids[keep], size[keep], mtime[keep], in_shard[keep])
        self.kept = keep  # the stored rows not removed

    def _copy(self, path: Path, index: Index, keep: np.ndarray, size, mtime) -> int:
        """Copy the stored rows ``keep`` into the shard, in file order."""
        with h5py.File(path, "r") as f:
            for start in range(0, len(index), _CHUNK_ROWS):
                stop = min(len(index), start + _CHUNK_ROWS)
                rows = np.flatnonzero(keep[start:stop]) + start
                if not len(rows):
                    continue
                block = f["features"][start:stop][rows - start]
                sha = (np.array(f["file_sha256"][start:stop], dtype=SHA_DTYPE)[rows - start]
                       if index.version == 2 else np.zeros(len(rows), SHA_DTYPE))
                self.writer.append(index.ids[rows].tolist(), block,
                                   Stamps(size[rows], mtime[rows], sha))
        return len(self.writer)

    def add(self, part: Path, ids: list[bytes], features: np.ndarray, stamps: Stamps,
            skipped: dict[bytes, tuple[str, int, int]]) -> None:
        keep = self.admission.admit(ids, stamps, len(self.writer))
        if keep:
            chosen = features if len(keep) == len(ids) else features[keep]
            self.writer.append([ids[k] for k in keep], chosen, stamps.take(keep))
        for i, (reason, size, mtime) in skipped.items():
            if self.admission.lose(i, size, mtime):
                self.skipped[i] = (reason, size, mtime)
        self.parts.append(part)

    def add_part(self, part: Path) -> None:
        """A part left by a killed run, read back."""
        with np.load(part) as data:
            ids = [i.encode() for i in data["ids"].tolist()]
            n = len(ids)
            stamps = Stamps(data["file_size"], data["file_mtime_ns"],
                            np.array(data["file_sha256"], dtype=SHA_DTYPE)) \
                if "file_size" in data else Stamps.unknown(n)
            lost = data["skipped_ids"].tolist()
            lost_size = data["skipped_size"] if "skipped_size" in data else [-1] * len(lost)
            lost_mtime = data["skipped_mtime_ns"] if "skipped_mtime_ns" in data else [-1] * len(lost)
            self.add(part, ids, data["features"], stamps,
                     {i.encode(): (r, int(s), int(m)) for i, r, s, m in
                      zip(lost, data["skipped_reasons"].tolist(), lost_size, lost_mtime)})

    def holds(self, parts: list[Path]) -> bool:
        """Whether this shard holds exactly ``parts``, in their order."""
        return self.parts == parts

    def discard(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)

    def finish(self, target: Path) -> Index:
        """Close the shard as ``target``; returns the file's new state."""
        self.writer.close()
        os.replace(self.tmp, target)
        a = self.admission
        live = np.array(sorted(set(range(len(self.writer))) - a.dead), dtype=np.int64)
        shard = Mapping.whole(target.name, live)
        stamps = self.writer.stamps.take(live)
        ids = np.array(self.writer.ids, dtype=bytes)[live] if len(live) else \
            np.array([], dtype=bytes)
        index, keep = self.index, self.kept.copy()
        size, mtime = _refreshed(index, self.refreshed)
        if self.compacts:
            mapping, rows = shard, (ids, stamps.size, stamps.mtime_ns)
        else:
            if a.replaced:
                keep &= _kept(index.ids, a.replaced)
            mapping = index.mapping.take(keep).then(shard)
            rows = (np.concatenate([index.ids[keep].astype(bytes), ids]),
                    np.concatenate([size[keep], stamps.size]),
                    np.concatenate([mtime[keep], stamps.mtime_ns]))
        now = set(rows[0].tolist())
        skipped = {i: r for i, r in index.skipped.items()
                   if i.encode() not in self.removed and i.encode() not in now}
        skipped_stamps = {i: index.skipped_stamps[i] for i in skipped
                          if i in index.skipped_stamps}
        for i, (reason, s, m) in self.skipped.items():
            if i not in now:
                skipped[i.decode()], skipped_stamps[i.decode()] = reason, (s, m)
        if not len(live):
            target.unlink()
        return Index(*rows, mapping, skipped, skipped_stamps, index.created)
