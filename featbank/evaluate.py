"""Metrics, the results store, per-model reports, and the paper-style table.

Metrics are pure functions of arrays. The results store is
``<cache>/<collection>/results.jsonl``: one JSON object per evaluated model
(contract in DESIGN.md), appended as each model finishes, so nothing computed
is lost when a later one fails. Tables are built from the store only.
"""
from __future__ import annotations

import csv
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, classification_report, confusion_matrix, f1_score

from .fileio import atomic_path, atomic_write_json, first_line, hold_lock
from .plots import plot_confusion
from .tasks import ids_digest

RESULT_KEYS = ("backbone", "weights", "task", "method", "head", "split", "top1", "top5",
               "balanced_accuracy", "macro_f1", "n_train", "n_test", "seconds", "created")


def top_k_accuracy(y_true, scores: np.ndarray, classes, k: int) -> float:
    """Fraction of rows whose true class is among the k highest scores.

    scores : array of shape (n_samples, n_classes), columns in ``classes`` order.
    """
    classes = np.asarray(classes)
    k = min(k, len(classes))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(classes) else \
        np.tile(np.arange(len(classes)), (len(scores), 1))
    return float(np.mean((classes[top] == np.asarray(y_true)[:, None]).any(axis=1)))


def metrics(y_true, scores: np.ndarray, classes) -> dict:
    """top1, top5, balanced_accuracy and macro_f1 of class scores (n_samples, n_classes)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(classes)[scores.argmax(axis=1)]
    return {"top1": float(np.mean(y_pred == y_true)),
            "top5": top_k_accuracy(y_true, scores, classes, 5),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true),
                                       zero_division=0))}


# -- the results store --------------------------------------------------------

def results_path(folder: Path) -> Path:
    return Path(folder) / "results.jsonl"


def result_row(*, collection: str, backbone: str, weights: str, weights_exact: str, task: str,
               method: str, head: str | None, test: dict, val: dict, n_train: int, n_val: int,
               n_test: int, n_classes: int, feature_dim: int, n_params: int, seconds: float,
               split_tag: str, test_ids, cell: str, **extra) -> dict:
    """One row of the store, off the shelf or fine-tuned (the keys DESIGN.md promises).

    test / val : :func:`metrics` of the test and validation parts; test_ids :
    the ids tested on (their digest tells identical evaluation sets); cell : the
    result's identity (a re-run of the same cell supersedes, never adds).
    """
    return {"collection": collection, "backbone": backbone, "weights": weights,
            "weights_exact": weights_exact, "task": task, "method": method, "head": head,
            "split": "test", **test, **{f"val_{k}": v for k, v in val.items()},
            "n_train": int(n_train), "n_val": int(n_val), "n_test": int(n_test),
            "n_classes": int(n_classes), "feature_dim": int(feature_dim),
            "n_params": int(n_params), "seconds": round(float(seconds), 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "split_tag": split_tag, "test_ids_sha256": ids_digest(test_ids), **extra,
            "cell": cell}


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
            raise OSError(err.errno, f"cannot write {path} ({err.strerror or err}); this row "
                                     "was not stored, the rows before it are intact") from None
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
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
            rows.append(row)
        except ValueError as err:
            if warn is not None:
                warn(f"{path}:{number}: damaged line skipped ({first_line(err)})")
    return rows


# -- per-model reports --------------------------------------------------------

def write_reports(stem: Path, y_true, y_pred, classes) -> None:
    """``<stem>_per_class.csv``, ``<stem>_confusion.csv`` and ``<stem>_confusion.png``."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    classes = [str(c) for c in classes]
    report = classification_report(y_true, y_pred, labels=classes, output_dict=True,
                                   zero_division=0)
    with open(f"{stem}_per_class.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for cls in classes:
            r = report[cls]
            writer.writerow([cls, f"{r['precision']:.4f}", f"{r['recall']:.4f}",
                             f"{r['f1-score']:.4f}", int(r["support"])])
    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    with open(f"{stem}_confusion.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true \\ predicted", *classes])
        writer.writerows([cls, *row] for cls, row in zip(classes, matrix.tolist()))
    plot_confusion(matrix, classes, Path(f"{stem}_confusion.png"))


# -- the table ----------------------------------------------------------------

def latest_rows(rows: list[dict]) -> list[dict]:
    """The newest row of each cell (a --force re-run supersedes the old one)."""
    latest = {}
    for row in rows:
        latest[row.get("cell") or json.dumps(row, sort_keys=True)] = row
    return list(latest.values())


def build_table(rows: list[dict], *, split_tag: str | None = None,
                variant: str | None = None) -> tuple[list[str], list[dict]]:
    """Rows task x backbone x weights; a column per head (test top-1), per head ensemble
    (``--ensemble``: the row of the backbones it averages), plus fine-tuning.

    Only results on ``split_tag`` and with the off-the-shelf ``variant`` given count.
    Returns (columns, records).
    """
    rows = [r for r in latest_rows(rows) if r.get("split") == "test"
            and (split_tag is None or r.get("split_tag") == split_tag)]
    shelf = [r for r in rows if r["method"] in ("off-the-shelf", "ensemble")
             and (variant is None or r.get("variant") == variant)]
    tuned = [r for r in rows if r["method"] == "fine-tuning"]
    column_of = {"off-the-shelf": "{head}", "ensemble": "{head} ensemble",
                 "fine-tuning": "fine-tuning"}
    heads = list(dict.fromkeys(column_of[r["method"]].format(head=r["head"]) for r in
                               sorted(shelf, key=lambda r: r["method"] == "ensemble")))
    records: dict[tuple, dict] = {}
    for r in shelf + tuned:
        key = (r["task"], r["backbone"], r["weights"])
        record = records.setdefault(key, {"task": r["task"], "backbone": r["backbone"],
                                          "weights": r["weights"], "dim": r.get("feature_dim")})
        column = column_of[r["method"]].format(head=r["head"])
        record[column] = r["top1"]
        if r.get("tuned"):
            record.setdefault("chosen", {})[column] = r["tuned"]
        if r.get("head") == "softmax" and r["method"] == "off-the-shelf":
            record["softmax params"] = r.get("n_params")
    columns = ["task", "backbone", "weights", "dim", *heads]
    if tuned:
        columns.append("fine-tuning")
    if "softmax" in heads:
        columns.append("softmax params")
    return columns, [records[k] for k in sorted(records)]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, str) and "sha256:" in value:  # enough to tell weights files apart
        return "+".join(part[:19] for part in value.split("+"))
    return str(value)


def table_notes(columns: list[str], records: list[dict]) -> list[str]:
    """One line per table row whose heads chose hyper-parameters on validation:
    ``label / vgg19 / imagenet: svm C=0.1, knn n_neighbors=5``."""
    notes = []
    for r in records:
        chosen = r.get("chosen") or {}
        parts = [f"{column} " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in chosen[column].items())
                 for column in columns if column in chosen]
        if parts:
            notes.append(f"{r['task']} / {r['backbone']} / {_cell(r['weights'])}: "
                         + ", ".join(parts))
    return notes


def to_markdown(columns: list[str], records: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in records]
    return "\n".join(lines)


def write_table(folder: Path, columns: list[str], records: list[dict]) -> tuple[Path, Path]:
    """``table.csv`` and ``table.json`` in the collection's cache folder."""
    csv_path, json_path = Path(folder) / "table.csv", Path(folder) / "table.json"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    atomic_write_json(json_path, {"columns": columns, "rows": records})
    return csv_path, json_path
