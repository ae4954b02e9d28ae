"""Filling a feature file: parts while a run goes, shards and a small main file at its end.

Rows live in shards: ``<file>.shards/NNNNNN.h5`` each hold a block of rows
(``features``), and the file's ``features`` is an HDF5 virtual dataset over
them, so plain h5py reads (N, D) as usual (a missing shard reads as NaN, and
featbank's reader refuses it). Adding images writes one new shard and
rewrites only the small main file (ids, skipped lists, the virtual layout),
never the vectors already stored; past ``MAX_SHARDS`` shards they are joined
into one (by the run that adds the shard past the limit, as it writes its
rows).

Concurrency: a run that writes a file holds its lock (``.locks/<file>.lock``, the
``filelock`` package) from reading what is done to the last fold, so a second
run on the same file waits, then finds the work done; rows are never
computed twice into one file, and parts never collide.

Crash safety: while extracting, every finished batch is written as an ``.npz``
part in ``<file>.parts/`` (written to a temporary name, then renamed, so a
part is whole or absent). Parts are folded in by writing a new shard, then a
new main file, each to a temporary name renamed into place: a kill at any
moment loses at most the batch in flight and never leaves a half-written
file (a shard that no main file names yet is deleted by the next fold).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path, atomic_write_json
from featbank.store.provenance import plain_attrs, provenance_conflict

_STR = h5py.string_dtype("utf-8")


_CHUNK_ROWS = 1024


MAX_SHARDS = 32
# Where --force-new keeps a feature file it replaces: <features>/replaced/<time>/
REPLACED = "replaced"
# Seconds a shard no main file names any more stays on disk (see drop_unnamed_shards).
SHARD_GRACE = 600


class FeatureWriter:
    """A feature file being filled: the HDF5 file plus its pending parts."""

    def __init__(self, path: str | os.PathLike, attrs: dict):
        self.path = Path(path)
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.attrs = plain_attrs(attrs)
        self.dtype = np.dtype(self.attrs["dtype"])
        self.dim = int(self.attrs["feature_dim"])
        self._next_part: int | None = None  # number of the next part; read once from disk
        self._live: _LiveShard | None = None  # this run's rows, ready to become its shard

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

    @property
    def lock_path(self) -> Path:
        """This file's lock (``.locks/<file>.lock`` beside it): one writer at a time, across
        processes. Lock files stay (deleting one another process may hold is unsafe), so
        they live out of sight, one small file per feature file ever begun."""
        locks = self.path.parent / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return locks / (self.path.name + ".lock")

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
        features = features.astype(self.dtype, copy=False)
        part = self.parts / f"{number:08d}.npz"
        with atomic_path(part) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array(ids, dtype=str), features=features,
                     skipped_ids=np.array(list(skipped), dtype=str),
                     skipped_reasons=np.array(list(skipped.values()), dtype=str))
        if self._live is None:
            self._live = _LiveShard.start(self)
        self._live.add(part, ids, features, skipped)

    @property
    def shards(self) -> Path:
        return self.path.with_name(self.path.name + ".shards")

    def merge(self) -> int:
        """Fold pending parts into the file: one new shard plus a new main file.

        The parts this object wrote are already in its live shard, which then
        becomes the new shard as it is (with the stored rows when the merge
        compacts); parts left by a killed run are read back.
        """
        parts = self._part_files()
        live, self._live = self._live, None
        if not parts:  # nothing to fold in; a file appears only once it holds rows
            if live is not None:
                live.discard()
            self._drop_parts()
            return 0
        live_holds_all = live is not None and live.holds(parts)
        if live_holds_all:
            old = live.index  # what the file held when the shard began; this run holds its lock
        else:
            old = Index.read(self.path) if self.path.is_file() else Index.empty()
        shards = self.shards
        shards.mkdir(parents=True, exist_ok=True)
        compact = live.compacts if live_holds_all else old.compacts()
        target = shards / f"{next_shard(shards):06d}.h5"
        if live_holds_all:  # it holds the stored rows too when it compacts
            writer = live.writer
            writer.close()
            os.replace(live.path, target)
            old.skipped.update(live.skipped)
        else:
            if live is not None:
                live.discard()
            for stale in shards.glob("*.tmp"):  # a live shard or a merge cut short by a kill
                stale.unlink(missing_ok=True)
            writer = self._fold(parts, old, compact, target)
        new = np.array(writer.ids, dtype=bytes)
        ids = new if compact else np.concatenate([old.ids, new])
        sources = ([] if compact else old.sources) + [(target.name, len(writer.ids))]
        if not writer.ids:
            target.unlink()
            sources = sources[:-1]
        self.write_main(ids, sources, old)
        drop_unnamed_shards(shards, {name for name, _ in sources},
                            superseded={name for name, _ in old.sources})
        self._drop_parts()
        return len(ids) - len(old.ids)

    def _fold(self, parts: list[Path], old: "Index", compact: bool, target: Path) -> "ShardWriter":
        with atomic_path(target) as tmp:
            writer = ShardWriter(tmp, self.dim, self.dtype,
                                 stored=None if compact else old.ids)
            if compact:
                writer.copy_from(self.path, old)
            for part in parts:
                with np.load(part) as data:
                    writer.append([i.encode() for i in data["ids"].tolist()], data["features"])
                    old.skipped.update(zip(data["skipped_ids"].tolist(),
                                           data["skipped_reasons"].tolist()))
            writer.close()
        return writer

    def write_main(self, ids: np.ndarray, sources: list[tuple[str, int]], old: "Index") -> None:
        attrs = dict(self.attrs)
        attrs["created"] = old.created or attrs.get("created")
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as out:
            out.create_dataset("ids", data=fixed_utf8(ids))
            virtual_features(out, sources, self.path.name + ".shards", self.dim, self.dtype)
            out.create_dataset("skipped_ids", data=list(old.skipped), dtype=_STR)
            out.create_dataset("skipped_reasons", data=list(old.skipped.values()), dtype=_STR)
            out.attrs.update({k: v for k, v in attrs.items() if v is not None})
            out.attrs["n_rows"] = len(ids)

    def _drop_parts(self) -> None:
        if self.parts.is_dir():
            shutil.rmtree(self.parts)
        self._next_part = None


@dataclass
class Index:
    """What a main file says: ids, skipped, its shards (name, rows); legacy = plain dataset."""

    ids: np.ndarray  # UTF-8 bytes: reading, comparing and rewriting 100k of them is 10x
    # cheaper than as variable-length strings
    skipped: dict[str, str]
    sources: list[tuple[str, int]]
    created: str | None
    legacy: bool = False

    def compacts(self) -> bool:
        """Whether the next merge joins every row into one shard: past ``MAX_SHARDS``
        shards, or to turn a file from before shards into one with a shard."""
        return self.legacy or len(self.sources) + 1 > MAX_SHARDS

    @classmethod
    def empty(cls) -> "Index":
        return cls(ids=np.array([], dtype=bytes), skipped={}, sources=[], created=None)

    @classmethod
    def read(cls, path: Path) -> "Index":
        with h5py.File(path, "r") as f:
            features = f["features"]
            sources = [(Path(vds.file_name).name, _rows(vds.vspace))
                       for vds in features.virtual_sources()] if features.is_virtual else []
            return cls(ids=np.array(f["ids"][:], dtype=bytes),
                       skipped=dict(zip(f["skipped_ids"].asstr()[:],
                                        f["skipped_reasons"].asstr()[:])),
                       sources=sources, created=f.attrs.get("created"),
                       legacy=not features.is_virtual and f["ids"].shape[0] > 0)


def fixed_utf8(ids: np.ndarray) -> np.ndarray:
    """Ids as fixed-length UTF-8 strings: written and read in one copy, unlike
    variable-length ones; ``f["ids"].asstr()[:]`` reads both kinds."""
    return ids.astype(h5py.string_dtype("utf-8", max(1, ids.dtype.itemsize)))


def _rows(selection) -> int:
    (first, _), (last, _) = selection.get_select_bounds()
    return last - first + 1


def virtual_features(out: h5py.File, sources, folder: str, dim: int, dtype) -> None:
    """``features`` as a virtual dataset over the shards (paths relative to the file)."""
    total = sum(rows for _, rows in sources)
    if total == 0:
        out.create_dataset("features", shape=(0, dim), dtype=dtype)
        return
    layout = h5py.VirtualLayout(shape=(total, dim), dtype=dtype)
    start = 0
    for name, rows in sources:
        layout[start:start + rows] = h5py.VirtualSource(f"{folder}/{name}", "features",
                                                        shape=(rows, dim))
        start += rows
    out.create_virtual_dataset("features", layout, fillvalue=np.nan)


def next_shard(folder: Path) -> int:
    numbers = [int(p.stem) for p in folder.glob("[0-9]*.h5") if p.stem.isdigit()]
    return max(numbers, default=-1) + 1


def drop_unnamed_shards(folder: Path, named: set[str], superseded: set[str] = frozenset()
                        ) -> None:
    """Delete the shards no main file names, once they have been unnamed for
    :data:`SHARD_GRACE` seconds: a reader that opened the previous main file just before
    it was replaced still finds the shards it maps (they keep their names; new shards
    get new numbers). ``superseded``: the shards the previous main file named, whose
    grace starts now."""
    now = time.time()
    for name in superseded - named:
        if (folder / name).is_file():
            os.utime(folder / name, (now, now))
    for shard in folder.glob("*.h5"):
        if shard.name not in named and now - shard.stat().st_mtime >= SHARD_GRACE:
            shard.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


@dataclass
class _LiveShard:
    """The rows of the parts one ``FeatureWriter`` writes, appended to a shard as they come.

    Written beside the parts (which stay the crash-safe record), so that the
    merge at the end of a run renames this file instead of reading every part
    back: at GPU speed that re-read cost a sixth of the run. When that merge
    will compact (``Index.compacts``), the shard begins with a copy of the
    stored rows and becomes the one shard. A killed run leaves it as a
    ``.tmp`` file, removed by the next merge.
    """

    path: Path
    writer: "ShardWriter"
    index: "Index"  # the main file when the shard began
    parts: list[Path]
    skipped: dict[str, str]
    compacts: bool  # it began with a copy of the stored rows, to become the only shard

    @classmethod
    def start(cls, out: FeatureWriter) -> "_LiveShard":
        index = Index.read(out.path) if out.path.is_file() else Index.empty()
        out.shards.mkdir(parents=True, exist_ok=True)
        path = out.shards / f"live.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        compacts = index.compacts()
        if compacts:
            writer = ShardWriter(path, out.dim, out.dtype)
            writer.copy_from(out.path, index)
        else:
            writer = ShardWriter(path, out.dim, out.dtype, stored=index.ids)
        return cls(path, writer, index, parts=[], skipped={}, compacts=compacts)

    def add(self, part: Path, ids: list[str], features: np.ndarray,
            skipped: dict[str, str]) -> None:
        self.writer.append([i.encode() for i in ids], features)
        self.parts.append(part)
        self.skipped.update(skipped)

    def holds(self, parts: list[Path]) -> bool:
        """Whether this shard holds exactly ``parts``, in their order."""
        return self.parts == parts

    def discard(self) -> None:
        self.writer.close()
        self.path.unlink(missing_ok=True)


class ShardWriter:
    """Appends rows to a shard's resizable ``features``; drops ids seen before.

    (A part may repeat rows already folded in when a run died between the
    rename of the new main file and the removal of its parts.)
    """

    def __init__(self, path: Path, dim: int, dtype: np.dtype, *,
                 stored: np.ndarray | None = None):
        """stored : UTF-8 ids already in the file's other shards, to drop if repeated."""
        self.file = h5py.File(path, "w")
        self.features = self.file.create_dataset(
            "features", shape=(0, dim), maxshape=(None, dim), dtype=dtype,
            chunks=(max(1, min(256, (1 << 20) // (dim * np.dtype(dtype).itemsize))), dim))
        # Sorted once and searched per batch: a tenth of the cost of a set of 100k ids,
        # which an addition of a few images paid in full.
        self.stored = np.sort(stored) if stored is not None and len(stored) else None
        self.seen, self.ids = set(), []

    def _stored(self, ids: list[bytes]) -> np.ndarray:
        if self.stored is None or not ids:
            return np.zeros(len(ids), dtype=bool)
        wanted = np.array(ids, dtype=self.stored.dtype if all(
            len(i) <= self.stored.dtype.itemsize for i in ids) else bytes)
        at = np.minimum(np.searchsorted(self.stored, wanted), len(self.stored) - 1)
        return self.stored[at] == wanted

    def append(self, ids: list[bytes], features: np.ndarray) -> None:
        old, keep = self._stored(ids), []
        for k, i in enumerate(ids):
            if not old[k] and i not in self.seen:
                keep.append(k)
                self.seen.add(i)
        if keep:
            n = len(self.ids)
            self.features.resize(n + len(keep), axis=0)
            self.features[n:] = features[keep] if len(keep) < len(ids) else features
            self.ids.extend(ids[k] for k in keep)

    def copy_from(self, path: Path, old: Index) -> None:
        with h5py.File(path, "r") as f:
            for start in range(0, len(old.ids), _CHUNK_ROWS * 8):
                stop = min(len(old.ids), start + _CHUNK_ROWS * 8)
                self.append(old.ids[start:stop].tolist(), f["features"][start:stop])

    def close(self) -> None:
        self.file.close()
