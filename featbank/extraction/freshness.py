"""Which images a run must compute for a feature file: the images' bytes decide, not
their paths.

An image's row is current while the image's size and modification time are those
recorded with the row (the test make and rsync use). When they differ, the image is
read and its sha256 compared with the row's: the same bytes (a copy, a touch) keep
the row and record the new stamp; other bytes mean the image changed, and it is
extracted again (its row replaced). ``verify`` (``extract.py --verify-images``)
reads and compares every image, for changes that keep size and mtime. Rows of
images no longer in the collection leave the file. An undecodable image is tried
again when its stamp changes.

Rows written before stamps were recorded take their image's current size and mtime
(there is nothing to compare them with); ``--verify-images`` extracts them again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from featbank.core.hashing import Stamp, read_stamped, stat_stamp
from featbank.store.writer import FeatureWriter


@dataclass
class Freshness:
    """What a feature file needs, and why (counts for the run's summary)."""

    todo: set[str] = field(default_factory=set)  # ids to extract now
    new: int = 0  # never extracted
    changed: int = 0  # their bytes differ from their rows' images: rows replaced
    touched: int = 0  # size or mtime changed, bytes the same: rows kept, stamps recorded
    adopted: int = 0  # rows without a stamp: the images' current stamps recorded
    retried: int = 0  # undecodable before, changed since
    gone: list[str] = field(default_factory=list)  # rows of images no longer in the collection

    def notes(self) -> list[str]:
        """What changed since the file was written, in words (empty when nothing did)."""
        out = []
        if self.changed:
            out.append(f"{self.changed} images changed since their rows were computed: "
                       "extracting them again")
        if self.gone:
            out.append(f"{len(self.gone)} rows of images no longer in the collection taken out")
        if self.retried:
            out.append(f"{self.retried} undecodable images changed: trying them again")
        if self.touched:
            out.append(f"{self.touched} images touched or copied with their bytes unchanged: "
                       "rows kept")
        if self.adopted:
            out.append(f"{self.adopted} rows written before image stamps were recorded took "
                       "their images' current size and mtime (--verify-images extracts them "
                       "again)")
        return out


class Stamps:
    """The collection's images' stamps for one run: stat once, read (sha256) at most once."""

    def __init__(self, paths: dict[str, Path]):
        self.paths = paths
        self.now = {i: stat_stamp(p) for i, p in paths.items()}
        self._sha: dict[str, str] = {}

    def sha256(self, image_id: str) -> str:
        if image_id not in self._sha:
            try:
                self._sha[image_id] = read_stamped(self.paths[image_id])[1].sha256
            except OSError:
                self._sha[image_id] = ""
        return self._sha[image_id]


def freshness(out: FeatureWriter, ids: list[str], stamps: Stamps, *,
              verify: bool = False) -> Freshness:
    """What ``out`` needs for the collection ``ids``; records the rows to take out and the
    stamps to refresh in ``out`` (applied at its next merge)."""
    stored = out.stored()
    rows, found = stored.rows, Freshness()
    wanted = set(ids)
    found.gone = [i for i in rows if i not in wanted]
    suspects = []
    refresh: dict[str, Stamp] = {}
    for i in ids:
        now = stamps.now[i]
        if i not in rows:
            continue
        was = stored.stamp(rows[i])
        if was.size < 0 and now is not None and not verify:
            refresh[i], found.adopted = now, found.adopted + 1
        elif now is None or verify or not was.same_file(now):
            suspects.append(i)
    known = stored.sha256([rows[i] for i in suspects])
    for i, sha in zip(suspects, known):
        now = stamps.now[i]
        if now is not None and sha and stamps.sha256(i) == sha:
            if not stored.stamp(rows[i]).same_file(now):
                refresh[i], found.touched = now, found.touched + 1
        else:
            found.todo.add(i)
            found.changed += 1
    for i, was in stored.skipped.items():
        if i in wanted and i not in rows and (was.size < 0 or stamps.now[i] is None
                                              or not was.same_file(stamps.now[i])):
            found.todo.add(i)
            found.retried += 1
    done = set(rows) | set(stored.skipped)
    new = [i for i in ids if i not in done]
    found.todo.update(new)
    found.new = len(new)
    out.remove(found.gone + [i for i in stored.skipped if i not in wanted])
    out.refresh(refresh)
    return found

