"""A file's identity is its bytes: sha256, computed once per file version; an image's
fingerprint (:class:`Stamp`) is its size, mtime and sha256.

A weights file is recorded by its sha256 wherever featbank uses it. Hashing
80 MB takes a fraction of a second but happens in every command that names the
file, so digests are remembered in ``$FEATBANK_HASHES`` (default
``~/.cache/featbank/sha256.json``), keyed by the file's absolute path, size and
modification time: a file that changes gets hashed again.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from featbank.core.fileio import atomic_write_json, hold_lock


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
