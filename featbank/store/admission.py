"""Which incoming rows a feature file takes.

Every row carries the stamp of its image (:class:`featbank.core.hashing.Stamp`). A
new row for an id the file already holds replaces the stored one when its image's
size or mtime differ (the image changed; the run compared its bytes), and is dropped
when they are the same (a run killed after its merge folds its parts again);
within a run the first row of an id stands unless a later one has another stamp.
"""
from __future__ import annotations

import numpy as np

from featbank.store.shards import Stamps


class Admission:
    """Which incoming rows a file takes (the rule in the module docstring).

    ``stored``: the rows the file holds before this run (ids, sizes, mtimes), and for
    each its position in the run's shard when the run copied it there (a compaction),
    else -1.
    """

    def __init__(self, ids: np.ndarray, size: np.ndarray, mtime: np.ndarray,
                 in_shard: np.ndarray):
        # Sorted once and searched per batch: a tenth of the cost of a set of 100k ids,
        # which an addition of a few images paid in full.
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]
        self.size, self.mtime, self.in_shard = size, mtime, in_shard
        self.replaced: set[bytes] = set()  # stored ids whose row this run replaces
        self.where: dict[bytes, tuple[int, int, int]] = {}  # id -> (position, size, mtime)
        self.dead: set[int] = set()  # positions in the shard no row of the file is

    def _stored(self, ids: list[bytes]) -> np.ndarray:
        """For each id, its stored row, or -1."""
        if not len(self.sorted) or not ids:
            return np.full(len(ids), -1)
        wanted = np.array(ids, dtype=self.sorted.dtype if all(
            len(i) <= self.sorted.dtype.itemsize for i in ids) else bytes)
        at = np.minimum(np.searchsorted(self.sorted, wanted), len(self.sorted) - 1)
        return np.where(self.sorted[at] == wanted, self.order[at], -1)

    def _supersede(self, i: bytes, row: int, size: int, mtime: int) -> bool:
        """Whether a row of image stamp (size, mtime) for id ``i`` replaces what the file
        holds for it; marks what it replaces."""
        if i in self.where:
            pos, was_size, was_mtime = self.where[i]
            if (was_size, was_mtime) == (size, mtime):
                return False
            self.dead.add(pos)
            del self.where[i]
        elif row >= 0 and i not in self.replaced:
            if (self.size[row], self.mtime[row]) == (size, mtime):
                return False
            self.replaced.add(i)
            if self.in_shard[row] >= 0:
                self.dead.add(int(self.in_shard[row]))
        return True

    def admit(self, ids: list[bytes], stamps: Stamps, start: int) -> list[int]:
        """The positions in ``ids`` of the rows to write; ``start``: the shard's length."""
        keep = []
        for k, (i, row) in enumerate(zip(ids, self._stored(ids).tolist())):
            size, mtime = int(stamps.size[k]), int(stamps.mtime_ns[k])
            if self._supersede(i, row, size, mtime):
                self.where[i] = (start + len(keep), size, mtime)
                keep.append(k)
        return keep

    def lose(self, i: bytes, size: int, mtime: int) -> bool:
        """An image this run could not decode: whether it is listed as skipped. A row the
        file holds for another stamp of it goes; one for this stamp stays (a repeat)."""
        [row] = self._stored([i]).tolist()
        return self._supersede(i, row, size, mtime)
