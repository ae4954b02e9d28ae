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

from featbank.core.fileio import atomic_path, atomic_write_json, first_line, hold_lock
from featbank.evaluation.plots import plot_confusion
from featbank.store.features import weights_label
from featbank.evaluation.stats import (RESAMPLES, accuracy_ci, map_resamples, mcnemar_p, mean_average_precision,
                    pack_hits, paired_map_p, paired_p, percentile_interval, resamples_digest,
                    unpack_hits)
from featbank.data.tasks import ids_digest

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


def hits(y_true, scores: np.ndarray, classes) -> np.ndarray:
    """Per row, whether the highest score names its class (multi-label: one of its classes).

    y_true : labels (n,), or for a multi-label task a 0/1 matrix (n, n_classes)
    whose columns follow ``classes``.
    """
    y_true = np.asarray(y_true)
    if y_true.ndim == 2:
        return y_true[np.arange(len(y_true)), scores.argmax(axis=1)].astype(bool)
    return np.asarray(classes)[scores.argmax(axis=1)] == y_true


def metrics(y_true, scores: np.ndarray, classes, *, ci: bool = False, seed: int = 0) -> dict:
    """top1, top5, balanced_accuracy and macro_f1 of class scores (n_samples, n_classes).

    A multi-label task (``y_true`` a 0/1 matrix, see :func:`hits`) adds ``mAP``
    (macro average precision over the classes present; the per-class AP is in
    the reports, :func:`write_reports`); its top-k counts a row right when one of its classes is among the
    k highest scores, and balanced accuracy and F1 (single-label measures) are
    None. ``ci`` adds 95 % bootstrap intervals ``top1_ci`` (and ``mAP_ci``, with
    ``mAP_resamples``, the mAP of each resample, for :func:`save_test_scores`; a
    results row leaves it out).
    """
    y_true = np.asarray(y_true)
    right = hits(y_true, scores, classes)
    if y_true.ndim == 2:
        k = min(5, y_true.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out = {"top1": float(right.mean()),
               "top5": float(np.take_along_axis(y_true, top, axis=1).any(axis=1).mean()),
               "balanced_accuracy": None, "macro_f1": None,
               "mAP": mean_average_precision(y_true, scores)[0]}
        if ci:
            out["mAP_resamples"] = map_resamples(y_true, scores, seed=seed)
            out["mAP_ci"] = percentile_interval(out["mAP_resamples"])
    else:
        y_pred = np.asarray(classes)[scores.argmax(axis=1)]
        out = {"top1": float(right.mean()),
               "top5": top_k_accuracy(y_true, scores, classes, 5),
               "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
               "macro_f1": float(f1_score(y_true, y_pred, average="macro",
                                          labels=np.unique(y_true), zero_division=0))}
    if ci:
        out["top1_ci"] = accuracy_ci(right, seed=seed)
    return out


# -- the results store --------------------------------------------------------

def results_path(folder: Path) -> Path:
    return Path(folder) / "results.jsonl"


def result_row(*, collection: str, backbone: str, weights: str, weights_exact: str, task: str,
               method: str, head: str | None, test: dict, val: dict, n_train: int, n_val: int,
               n_test: int, n_classes: int, feature_dim: int, n_params: int, seconds: float,
               split_tag: str, test_ids, test_hits, cell: str, **extra) -> dict:
    """One row of the store, off the shelf or fine-tuned (the keys DESIGN.md promises).

    test / val : :func:`metrics` of the test and validation parts (test with
    ``ci=True``); test_ids : the ids tested on (their digest tells identical
    evaluation sets); test_hits : :func:`hits` of those ids, stored in sorted-id
    order (``test_correct``) so that two rows on one test set can be paired
    (McNemar's test in the table); cell : the result's identity (a re-run of the
    same cell supersedes, never adds).
    """
    test_ids = list(test_ids)
    order = sorted(range(len(test_ids)), key=test_ids.__getitem__)

    return {"collection": collection, "backbone": backbone, "weights": weights,
            "weights_exact": weights_exact, "task": task, "method": method, "head": head,
            "split": "test", **{k: v for k, v in test.items() if k != "mAP_resamples"},
            **{f"val_{k}": v for k, v in val.items()},
            "n_train": int(n_train), "n_val": int(n_val), "n_test": int(n_test),
            "n_classes": int(n_classes), "feature_dim": int(feature_dim),
            "n_params": int(n_params), "seconds": round(float(seconds), 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "split_tag": split_tag, "test_ids_sha256": ids_digest(test_ids),
            "test_correct": pack_hits(np.asarray(test_hits, dtype=bool)[order]), **extra,
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

def write_reports(stem: Path, y_true, y_pred, classes, scores: np.ndarray | None = None) -> None:
    """``<stem>_per_class.csv``, ``<stem>_confusion.csv`` and ``<stem>_confusion.png``.

    A multi-label task (``y_true`` a 0/1 matrix, ``scores`` its class scores)
    has no confusion matrix: its per-class file gives each class's average
    precision and number of positives.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    classes = [str(c) for c in classes]
    if np.ndim(y_true) == 2:
        per_class = mean_average_precision(np.asarray(y_true), scores)[1]
        with open(f"{stem}_per_class.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["class", "average_precision", "positives"])
            for cls, ap, n in zip(classes, per_class, np.asarray(y_true).sum(axis=0)):
                writer.writerow([cls, "" if np.isnan(ap) else f"{ap:.4f}", int(n)])
        return
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


def save_test_scores(folder: Path, name: str, test_ids, truth: np.ndarray, scores: np.ndarray,
                     classes, test: dict, seed: int) -> str:
    """A multi-label row's per-image test scores, for the table's paired test of mAP:
    ``<folder>/<name>``, an ``.npz`` of ``ids``, ``truth`` (0/1) and ``scores`` in
    sorted-id order (as ``test_correct``), ``classes``, and the mAP of each
    bootstrap resample (``test["mAP_resamples"]``, drawn with ``seed``) with the
    resamples' digest: cells of a row with equal digests are paired at no cost.
    Returns ``name``, the row's ``test_scores`` (relative to the store's folder,
    which may move)."""
    ids = np.asarray(list(test_ids), dtype=str)
    order = np.argsort(ids, kind="stable")
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, ids=ids[order], truth=np.asarray(truth, dtype=np.int8)[order],
                            scores=np.asarray(scores, dtype=np.float32)[order],
                            classes=np.asarray([str(c) for c in classes]),
                            map_resamples=test["mAP_resamples"],
                            resamples_digest=resamples_digest(len(ids), seed=seed))
    return name


def load_test_scores(folder: Path | None, row: dict) -> dict[str, np.ndarray] | None:
    """The arrays of a row's ``test_scores`` file (:func:`save_test_scores`); None when it
    has none or the file is gone or unreadable."""
    if folder is None or not row.get("test_scores"):
        return None
    try:
        with np.load(Path(folder) / row["test_scores"]) as data:
            return {key: data[key] for key in data.files}
    except (OSError, KeyError, ValueError):
        return None


# -- the table ----------------------------------------------------------------

def latest_rows(rows: list[dict]) -> list[dict]:
    """The newest row of each cell (a --force re-run supersedes the old one)."""
    latest = {}
    for row in rows:
        latest[row.get("cell") or json.dumps(row, sort_keys=True)] = row
    return list(latest.values())


SIGNIFICANCE = 0.05  # of the paired tests behind the table's marks
TABLE_LEGEND = ("Test top-1 (mAP for multi-label tasks) ± half the 95 % bootstrap interval "
                "(over --repeats: mean ± standard deviation); in bold, the cells of a row not "
                "significantly worse than its best (p >= 0.05: McNemar's exact test on top-1, "
                "a paired bootstrap test on mAP).")

# Settings that change a cell's result, as a column label shows them when they are not
# the default: row key -> (default, how to write it).
_SETTINGS = {"option_normalize": ("standard", "{}"), "option_pca": (None, "pca {}"),
             "option_balanced": (False, "balanced"),
             "option_softmax_recipe": ("fast", "{} recipe"),
             "train_fraction": (1.0, lambda v: f"train {100 * v:g}%"),
             "freeze": ("none", "freeze {}")}


def column_label(row: dict) -> str:
    """The table column of a row: its head (or fine-tuning) and every non-default setting,
    e.g. ``logreg (l2, pca 128, train 25%)``."""
    name = {"off-the-shelf": "{head}", "ensemble": "{head} ensemble",
            "fine-tuning": "fine-tuning"}[row["method"]].format(head=row.get("head"))
    settings = []
    for key, (default, text) in _SETTINGS.items():
        value = row.get(key, default)
        if value != default:
            settings.append(text(value) if callable(text) else text.format(value))
    return f"{name} ({', '.join(settings)})" if settings else name


def row_weights(row: dict) -> str:
    """Readable weights of a row (rows from before ``weights_label`` get one made up)."""
    if row.get("weights_label"):
        return row["weights_label"]
    return " + ".join(weights_label(w, e) for w, e in
                      zip(row["weights"].split("+"), row.get("weights_exact", row["weights"]).split("+")))


def score_of(row: dict) -> tuple[str, float, list | None]:
    """(metric, value, 95 % interval) a table shows for a row: mAP for multi-label tasks."""
    return ("mAP", row["mAP"], row.get("mAP_ci")) if row.get("mAP") is not None else \
        ("top1", row["top1"], row.get("top1_ci"))


def build_table(rows: list[dict], *, split_tag: str | list[str] | None = None,
                variant: str | list[str] | None = None, folder: Path | None = None
                ) -> tuple[list[str], list[dict]]:
    """Rows task x backbone x weights; a column per head and its settings, per head ensemble
    (``--ensemble``: the row of the backbones it averages), plus fine-tuning.

    Only results on ``split_tag`` (several: the seeded splits of ``--repeats``)
    and with the off-the-shelf ``variant`` (or variants, one per repeat) count. A cell shows test top-1
    (mAP for a multi-label task) with, in ``spread``, the half-width of its 95 %
    bootstrap interval, or over repeats the mean and the standard deviation.
    ``marked`` lists the cells of a row not significantly worse than its best
    (:func:`mark_cells`; mAP cells need their ``test_scores``, files in the store's
    ``folder``). Returns (columns, records).
    """
    tags = [split_tag] if isinstance(split_tag, str) else split_tag
    variants = [variant] if isinstance(variant, str) else variant
    rows = [r for r in latest_rows(rows) if r.get("split") == "test"
            and (tags is None or r.get("split_tag") in tags)]
    rows = [r for r in rows if r["method"] == "fine-tuning"
            or (r["method"] in ("off-the-shelf", "ensemble")
                and (variants is None or r.get("variant") in variants))]
    order = {"off-the-shelf": 0, "ensemble": 1, "fine-tuning": 2}
    heads = list(dict.fromkeys(column_label(r) for r in sorted(rows, key=lambda r: order[r["method"]])))
    grouped: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        key = (r["task"], r["backbone"], r["weights"])
        grouped.setdefault(key, {}).setdefault(column_label(r), []).append(r)
    records = []
    for key in sorted(grouped):
        cells = grouped[key]
        first = next(iter(cells.values()))[0]
        metric = score_of(first)[0]
        record = {"task": key[0] + (" (mAP)" if metric == "mAP" else ""), "backbone": key[1],
                  "weights": row_weights(first), "dim": first.get("feature_dim"),
                  "spread": {}, "repeats": {}}
        for column, members in cells.items():
            values = [score_of(m)[1] for m in members]
            record[column] = float(np.mean(values))
            record["repeats"][column] = len(members)
            if len(members) > 1:
                record["spread"][column] = float(np.std(values, ddof=1))
            elif score_of(members[0])[2]:
                low, high = score_of(members[0])[2]
                record["spread"][column] = (high - low) / 2
            if members[0].get("tuned"):
                record.setdefault("chosen", {})[column] = members[0]["tuned"]
        record["marked"] = mark_cells({c: min(m, key=lambda r: r["split_tag"])
                                       for c, m in cells.items()}, folder=folder)
        records.append(record)
    return ["task", "backbone", "weights", "dim", *heads], records


def mark_cells(cells: dict[str, dict], *, folder: Path | None = None) -> list[str]:
    """The columns whose row is not significantly worse than the best one's: the best,
    and those a paired test on the same test images cannot tell from it at
    ``SIGNIFICANCE``: McNemar's exact test of top-1 hits (``test_correct``), or for
    mAP a paired bootstrap test of the per-image scores (``test_scores``, files in
    ``folder``). Rows without them, or on other test images, are not compared (and
    not marked)."""
    metric = score_of(next(iter(cells.values())))[0]
    paired = {}
    for column, row in cells.items():
        if metric == "top1" and row.get("test_correct"):
            paired[column] = unpack_hits(row["test_correct"], row["n_test"])
        elif metric == "mAP" and (stored := load_test_scores(folder, row)) is not None:
            paired[column] = stored
    if not paired:
        return []
    best_column = max(paired, key=lambda c: score_of(cells[c])[1])
    best, best_data = cells[best_column], paired[best_column]
    marked = []
    for column, data in paired.items():
        if cells[column].get("test_ids_sha256") != best.get("test_ids_sha256"):
            continue
        if column != best_column:
            p = _paired_p(metric, best_data, data)
            if p is None or p < SIGNIFICANCE:
                continue
        marked.append(column)
    return marked


def _paired_p(metric: str, best, other) -> float | None:
    """p-value of the paired test of ``metric``; None when the two cannot be paired."""
    if metric == "top1":
        return mcnemar_p(best, other)
    if not np.array_equal(best["truth"], other["truth"]):  # other labels (a changed task)
        return None
    digest = best.get("resamples_digest")
    if digest is not None and str(digest) == str(other.get("resamples_digest")) and \
            len(best["map_resamples"]) == len(other["map_resamples"]) == RESAMPLES:
        return paired_p(best["map_resamples"], other["map_resamples"])
    return paired_map_p(best["truth"], best["scores"], other["scores"])


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
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
            notes.append(f"{r['task']} / {r['backbone']} / {r['weights']}: " + ", ".join(parts))
    return notes


def to_markdown(columns: list[str], records: list[dict]) -> str:
    """The table as Markdown: ``0.914 ± 0.046``, in bold where ``marked``."""
    def text(record: dict, column: str) -> str:
        value = _cell(record.get(column))
        if column in record.get("spread", {}):
            value += f" ± {record['spread'][column]:.3f}"
        return f"**{value}**" if column in record.get("marked", ()) else value

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(r, c) for c in columns) + " |" for r in records]
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
