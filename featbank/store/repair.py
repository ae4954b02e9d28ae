"""Repairing a damaged feature file: keep every row that can be read, drop the rest.

- A damaged shard: the rows mapped onto it leave the file; every other row stays
  where it is (nothing is copied).
- A damaged main file or layout: the file is rebuilt from its shards, which hold
  their own ids, digests and image stamps; where two shards hold an id, the newer
  one's row is the id's (a replaced image, a compaction). Shards of the first
  format hold no ids: a file of that format with a damaged main file loses its rows.
- A killed run's part that does not read is set aside.

Dropped rows are simply absent afterwards, so the next extraction computes them
again (and rows of images that changed or left since are found so by their
stamps). Nothing is deleted: what cannot be used moves to
``<features>/damaged/<time>/``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from featbank.store.health import main_problems, problems, shard_problem, unreadable_parts
from featbank.store.layout import Index, Mapping, shards_folder
from featbank.store.provenance import plain_attrs
from featbank.store.shards import Stamps, read_shard_rows, shard_files
from featbank.store.writer import FeatureWriter

DAMAGED = "damaged"


@dataclass
class Repair:
    """What was wrong with a file and what was done: rows kept and rows dropped (to be
    extracted again), and where the unusable pieces went."""

    path: Path
    problems: list[str]
    kept: int
    dropped: int
    set_aside: Path | None
    rebuilt: bool = False  # the main file was rebuilt from the shards

    def __str__(self) -> str:
        done = (f"kept {self.kept} rows, {self.dropped} to extract again"
                if self.dropped or self.kept else "no row could be read; all to extract again")
        how = "rebuilt from its shards: " if self.rebuilt else ""
        where = f"; the damaged pieces are in {self.set_aside}" if self.set_aside else ""
        return f"{self.path}: {'; '.join(self.problems)}; repaired: {how}{done}{where}"


def repair(path: str | Path) -> Repair | None:
    """Repair the feature file at ``path`` in place; None when it is whole."""
    path = Path(path)
    found = problems(path)
    if not found:
        return None
    aside = _aside(path)
    for part in unreadable_parts(path):
        _move(part, aside)
    kept = dropped = 0
    rebuilt = False
    if not path.exists() or all(p.startswith("part ") for p in found):
        pass
    elif main_problems(found):
        before = _count(path)
        _move(path, aside)
        kept = _rebuild_from_shards(path, aside)
        dropped, rebuilt = max(0, before - kept), kept > 0
    else:
        kept, dropped = _drop_damaged_shards(path, aside)
    return Repair(path, found, kept, dropped, aside if aside.exists() else None, rebuilt)


def _drop_damaged_shards(path: Path, aside: Path) -> tuple[int, int]:
    """Take the rows of damaged shards out of the file (the shards move aside)."""
    index = Index.read(path)
    with h5py.File(path, "r") as f:
        attrs = plain_attrs(dict(f.attrs))
    folder, mapping = shards_folder(path), index.mapping
    needed: dict[str, int] = {}
    for shard, _, stop in mapping.segments():
        needed[shard] = max(needed.get(shard, 0), stop)
    bad = sorted(name for name, rows in needed.items() if shard_problem(folder / name, rows))
    lost = np.isin(mapping.shard_of, [mapping.shards.index(name) for name in bad])
    for name in bad:
        _move(folder / name, aside)
    out = FeatureWriter(path, attrs)
    out.remove([i.decode() for i in index.ids[lost].tolist()])
    out.merge()
    return int((~lost).sum()), int(lost.sum())


def _rebuild_from_shards(path: Path, aside: Path) -> int:
    """A new main file and layout from the shards' own rows; returns the rows kept."""
    folder = shards_folder(path)
    shards = []
    for shard in shard_files(folder):
        rows = read_shard_rows(shard)
        if rows is None:
            _move(shard, aside)  # unreadable, or of the first format (no ids of its own)
        else:
            shards.append(rows)
    if not shards:
        return 0
    seen: set[bytes] = set()
    chosen = []  # (shard k, row) of each id's newest row
    for k in range(len(shards) - 1, -1, -1):
        for row, i in enumerate(shards[k].ids.tolist()):
            if i not in seen:
                seen.add(i)
                chosen.append((k, row))
    chosen.sort()
    at = np.array(chosen, dtype=np.int64)
    mapping = Mapping([s.name for s in shards], at[:, 0].astype(np.int32), at[:, 1])
    ids = np.concatenate([shards[k].ids[[r for kk, r in chosen if kk == k]]
                          for k in range(len(shards))])
    stamps = Stamps.join([shards[k].stamps.take([r for kk, r in chosen if kk == k])
                          for k in range(len(shards))])
    attrs = dict(shards[-1].provenance)
    Index(ids, stamps.size, stamps.mtime_ns, mapping, created=attrs.get("created")).write(
        path, attrs)
    return len(ids)


def _count(path: Path) -> int:
    try:
        with h5py.File(path, "r") as f:
            return int(f["ids"].shape[0])
    except (OSError, KeyError):
        return 0


def _aside(path: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return path.parent / DAMAGED / stamp


def _move(piece: Path, aside: Path) -> None:
    if piece.exists():
        aside.mkdir(parents=True, exist_ok=True)
        os.replace(piece, aside / piece.name)
