"""A file's identity is its bytes: sha256, computed once per file version.

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
