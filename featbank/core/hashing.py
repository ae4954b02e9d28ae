"""A file's identity is its bytes: sha256, computed once per file version; an image's
fingerprint (:class:`Stamp`) is its size, mtime and sha256.

A weights file is recorded by its sha256 wherever featbank uses it. Hashing
80 MB takes a fraction of a second but happens in every command that names the
file, so digests are remembered in ``$FEATBANK_HASHES`` (default
``~/.cache/featbank/sha256.json``), keyed by the file's absolute path, size and
modification time: a file that changes gets hashed again.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from featbank.core.fileio import atomic_write_json, atomic_write_text, hold_lock


def hash_memo() -> Path:
    """Where digests are remembered (``$FEATBANK_HASHES``, else the user's cache folder)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "featbank"
    return Path(os.environ.get("FEATBANK_HASHES", default / "sha256.json"))


def _key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _read(memo: Path) -> dict:
    try:
        return json.loads(memo.read_text())
    except (OSError, ValueError):  # none yet, or damaged: hashes are recomputed
        return {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, remembered by path, size and mtime."""
    path = Path(path)
    key, memo = _key(path), hash_memo()
    known = _read(memo).get(key)
    if known:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        with hold_lock(f"{memo}.lock"):
            entries = _read(memo)
            entries[key] = value
            atomic_write_json(memo, entries)
    except OSError:  # a read-only home: the digest is still right, only not remembered
        pass
    return value


# -- an image file's fingerprint -----------------------------------------------------

@dataclass(frozen=True)
class Stamp:
    """What an image file was when its row was computed, as make and rsync compare files:
    its size and modification time (ns), and the sha256 of its bytes where it was read.

    A file whose size or mtime differs may have changed; its sha256 then decides
    (a file touched or copied with its content intact keeps its row). ``-1`` and ``""``
    mean not known (rows written before featbank recorded them).
    """

    size: int = -1
    mtime_ns: int = -1
    sha256: str = ""

    def same_file(self, other: "Stamp") -> bool:
        """The cheap test: same size and modification time."""
        return self.size == other.size and self.mtime_ns == other.mtime_ns


UNKNOWN = Stamp()


def stat_stamp(path: str | os.PathLike) -> Stamp | None:
    """Size and mtime of ``path`` (no sha256: nothing is read); None when it is not a file."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return Stamp(stat.st_size, stat.st_mtime_ns)


def read_stamped(path: str | os.PathLike) -> tuple[bytes, Stamp]:
    """The bytes of ``path`` and its stamp, sha256 included, from one open file (the size
    and mtime are those of the bytes read). Raises OSError as ``open`` does."""
    with open(path, "rb") as fh:
        stat = os.fstat(fh.fileno())
        data = fh.read()
    return data, Stamp(stat.st_size, stat.st_mtime_ns, hashlib.sha256(data).hexdigest())


def stamp_images(paths: dict[str, os.PathLike]) -> dict[str, Stamp]:
    """Each image's full stamp, sha256 included (every image is read once); an image that
    cannot be read is left out."""
    stamps = {}
    for image_id, path in paths.items():
        try:
            stamps[image_id] = read_stamped(path)[1]
        except OSError:
            continue
    return stamps


def changed_images(recorded: dict[str, Stamp], paths: dict[str, os.PathLike]) -> list[str]:
    """The ids whose image no longer holds the bytes ``recorded`` (the test extraction
    uses: the same size and mtime mean the same file; otherwise the sha256 decides);
    an image no longer there has changed."""
    changed = []
    for image_id, was in recorded.items():
        now = stat_stamp(paths[image_id]) if image_id in paths else None
        if now is not None and was.same_file(now):
            continue
        try:
            if now is None or read_stamped(paths[image_id])[1].sha256 != was.sha256:
                changed.append(image_id)
        except OSError:
            changed.append(image_id)
    return changed


def stamps_digest(stamps: dict[str, Stamp]) -> str:
    """``sha256:`` of the images' ids and content: equal for the same bytes under the same
    ids, whatever their mtimes (a collection copied elsewhere keeps its digest)."""
    text = "\n".join(f"{i}\t{stamps[i].sha256}" for i in sorted(stamps))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def write_stamps(path: os.PathLike, stamps: dict[str, Stamp]) -> None:
    """``id,size,mtime_ns,sha256`` per image (whole or absent)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "size", "mtime_ns", "sha256"])
    writer.writerows([i, s.size, s.mtime_ns, s.sha256] for i, s in sorted(stamps.items()))
    atomic_write_text(path, buffer.getvalue())


def read_stamps(path: os.PathLike) -> dict[str, Stamp]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["id"]: Stamp(int(r["size"]), int(r["mtime_ns"]), r["sha256"])
                for r in csv.DictReader(fh)}
