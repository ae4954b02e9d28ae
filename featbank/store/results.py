"""The results store: ``<cache>/<collection>/results.jsonl``, one JSON object per evaluated model.

The row's keys are the contract in docs/design.md (:func:`featbank.evaluation.reports.result_row`
builds one). Rows are appended whole, under a lock, as each model finishes, so
nothing computed is lost when a later one fails; a damaged line is reported
and skipped; a cell is stored once (``--force`` replaces its row). Tables and
plots are built from the store only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from featbank.core.errors import BadInput, WriteFailed
from featbank.core.fileio import atomic_path, first_line, hold_lock

RESULT_KEYS = ("backbone", "weights", "task", "method", "head", "split", "top1", "top5",
               "balanced_accuracy", "macro_f1", "n_train", "n_test", "seconds", "created")


def results_path(folder: Path) -> Path:
    return Path(folder) / "results.jsonl"


def store_lock(folder: Path):
    """The store's lock (``results.jsonl.lock``), held: every writer holds it."""
    path = results_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    return hold_lock(str(path) + ".lock")


def append_result(folder: Path, row: dict, *, replace: bool = False) -> bool:
    """Store one model's row, whole, under the lock; returns whether it was stored.

    A cell is stored once: a row whose ``cell`` is already there adds nothing,
    unless ``replace`` (``--force``), which swaps the old row for it. A write
    that fails (disk full, read-only cache) raises ``OSError`` with one line,
    and the store is left as it was.
    """
    missing = [k for k in RESULT_KEYS if k not in row]
    if missing:
        raise AssertionError(f"result row lacks {missing}")
    path = results_path(folder)
    line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    with store_lock(folder):
        stored = [r for r in load_results(folder) if r.get("cell") == row["cell"]]
        if stored and not replace:
            return False
        if stored:
            _rewrite_without(path, row["cell"], line)
        else:
            _append_whole(path, line)
    return True


def _append_whole(path: Path, line: bytes) -> None:
    """One row at the end; a torn last line (a killed writer) is closed first, so it
    stays one damaged line and never swallows this row."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, size)  # nothing half-written stays behind
            raise WriteFailed(err.errno, f"cannot write {path} ({err.strerror or err}); this "
                                         "row was not stored, the rows before it are intact") from None
    finally:
        os.close(fd)


def _rewrite_without(path: Path, cell: str, line: bytes) -> None:
    kept = [raw for raw in path.read_bytes().splitlines(keepends=True)
            if _cell_of(raw) != cell]
    kept = [raw if raw.endswith(b"\n") else raw + b"\n" for raw in kept]
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"".join(kept) + line)


def _cell_of(raw: bytes) -> str | None:
    try:
        return json.loads(raw).get("cell")
    except (ValueError, AttributeError):
        return None


def load_results(folder: Path, *, warn=None) -> list[dict]:
    """Every row of the store; a damaged line (half-written, or edited by hand) is
    skipped and, with ``warn``, reported with its line number."""
    path = results_path(folder)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise BadInput(f"a JSON {type(row).__name__}, not an object")
            rows.append(row)
        except ValueError as err:
            if warn is not None:
                warn(f"{path}:{number}: damaged line skipped ({first_line(err)})")
    return rows


def latest_rows(rows: list[dict]) -> list[dict]:
    """The newest row of each cell (a --force re-run supersedes the old one)."""
    latest = {}
    for row in rows:
        latest[row.get("cell") or json.dumps(row, sort_keys=True)] = row
    return list(latest.values())


# The folders of a collection's cache that rows point into.
STORED_FOLDERS = ("heads", "reports", "finetune", "features")


def stored_path(folder: Path, value: str) -> Path:
    """Where a path a row keeps (``head_path``, ``trunk_path``, ``run``, ``test_scores``)
    lies: rows keep them relative to the store's folder, so a cache folder moved or
    renamed, or a command run from elsewhere, still finds them. Rows written before
    that kept absolute or working-directory paths: their part from ``heads/``,
    ``finetune/`` or ``reports/`` on is looked up in ``folder`` too."""
    path = Path(value)
    for k, part in enumerate(path.parts):
        if part in STORED_FOLDERS:
            return Path(folder).joinpath(*path.parts[k:])
    return path if path.is_absolute() else Path(folder) / path
