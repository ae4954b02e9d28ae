"""Repairing a damaged feature file: keep every row that can be read, drop the rest.

Dropped rows are simply absent afterwards, so the next extraction computes them
again. Nothing is deleted: what cannot be used (a main file that does not open, a
shard that is missing rows, a part that does not read) moves to
``<features>/damaged/<time>/``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from featbank.core.fileio import atomic_path
from featbank.store.health import problems, shard_problem, unreadable_parts
from featbank.store.provenance import plain_attrs
from featbank.store.writer import (
    FeatureWriter,
    Index,
    ShardWriter,
    drop_unnamed_shards,
    next_shard,
)

DAMAGED = "damaged"
CHUNK = 8192


@dataclass
class Repair:
    """What was wrong with a file and what was done: rows kept and rows dropped (to be
    extracted again), and where the unusable pieces went."""

    path: Path
    problems: list[str]
    kept: int
    dropped: int
    set_aside: Path | None

    def __str__(self) -> str:
        done = (f"kept {self.kept} rows, {self.dropped} to extract again"
                if self.dropped or self.kept else "no row could be read; all to extract again")
        where = f"; the damaged pieces are in {self.set_aside}" if self.set_aside else ""
        return f"{self.path}: {'; '.join(self.problems)}; repaired: {done}{where}"


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
    if not path.exists() or all(p.startswith("part ") for p in found):
        pass
    elif any(not p.startswith("its shard ") for p in found):  # the main file itself
        dropped = _count(path)
        for piece in (path, path.with_name(path.name + ".shards")):
            _move(piece, aside)
    else:
        kept, dropped = _rebuild(path, aside)
    return Repair(path, found, kept, dropped, aside if aside.exists() else None)


def _rebuild(path: Path, aside: Path) -> tuple[int, int]:
    """Write one new shard of the rows of every whole shard, then a new main file."""
    index = Index.read(path)
    with h5py.File(path, "r") as f:
        attrs, dim, dtype = plain_attrs(dict(f.attrs)), f["features"].shape[1], f["features"].dtype
    shards = path.with_name(path.name + ".shards")
    target = shards / f"{next_shard(shards):06d}.h5"
    start, bad = 0, []
    with atomic_path(target) as tmp:
        writer = ShardWriter(tmp, dim, dtype)
        for name, rows in index.sources:
            ids, start = index.ids[start:start + rows], start + rows
            if shard_problem(shards / name, rows):
                bad.append(shards / name)
                continue
            with h5py.File(shards / name, "r") as shard:
                for a in range(0, rows, CHUNK):
                    writer.append(ids[a:a + CHUNK].tolist(), shard["features"][a:min(rows, a + CHUNK)])
        writer.close()
    kept = len(writer.ids)
    sources = [(target.name, kept)] if kept else []
    if not kept:
        target.unlink()
    FeatureWriter(path, attrs).write_main(np.array(writer.ids, dtype=bytes), sources, index)
    for shard in bad:
        _move(shard, aside)
    if shards.is_dir():
        drop_unnamed_shards(shards, {name for name, _ in sources},
                            superseded={name for name, _ in index.sources})
    return kept, len(index.ids) - kept


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
