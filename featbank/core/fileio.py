"""Whole-or-absent file writes: write a temporary sibling, then rename it over the target.

A reader (or a run resumed after a kill) sees the old file or the new one,
never half of one: ``os.replace`` is atomic on one filesystem. Each writer's
temporary name is its own (process id and a random part), so two processes
writing the same file never write into one temporary file.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path to write; it replaces ``path`` when the block ends cleanly."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def first_line(err: Exception) -> str:
    """The first line of an error's message (its type when it has none), for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def hold_lock(path: str | os.PathLike, *, on_wait=None):
    """Acquire the inter-process lock file ``path`` (the ``filelock`` package).

    Returns a context manager that releases it. When another process holds
    it, ``on_wait()`` is called once, then this one waits its turn.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        return lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        return lock.acquire()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
