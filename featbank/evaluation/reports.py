"""What is kept of an evaluated model: its results row, per-class reports and per-image scores.

:func:`result_row` builds the row the results store keeps (the keys of
docs/design.md); :func:`write_reports` writes per-class CSVs and confusion
matrices; :func:`save_test_scores` keeps a multi-label row's per-image test
scores, which the table's paired test of mAP reads back.
"""
from __future__ import annotations

import csv
import json
import zipfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from featbank.core.errors import DamagedFile
from featbank.core.fileio import atomic_path, first_line
from featbank.data.tasks import ids_digest
from featbank.evaluation.plots import plot_confusion
from featbank.evaluation.stats import mean_average_precision, pack_hits, resamples_digest
from featbank.store.results import stored_path


def result_row(*, collection: str, backbone: str, weights: str, weights_exact: str, task: str,
               method: str, head: str | None, test: dict, val: dict, n_train: int, n_val: int,
               n_test: int, n_classes: int, feature_dim: int, n_params: int, seconds: float,
               split_tag: str, test_ids, test_hits, cell: str, **extra) -> dict:
    """One row of the store, off the shelf or fine-tuned (the keys of docs/design.md, "The results store").

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
        with _whole(Path(f"{stem}_per_class.csv")) as fh:
            writer = csv.writer(fh)
            writer.writerow(["class", "average_precision", "positives"])
            for cls, ap, n in zip(classes, per_class, np.asarray(y_true).sum(axis=0)):
                writer.writerow([cls, "" if np.isnan(ap) else f"{ap:.4f}", int(n)])
        return
    report = classification_report(y_true, y_pred, labels=classes, output_dict=True,
                                   zero_division=0)
    with _whole(Path(f"{stem}_per_class.csv")) as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for cls in classes:
            r = report[cls]
            writer.writerow([cls, f"{r['precision']:.4f}", f"{r['recall']:.4f}",
                             f"{r['f1-score']:.4f}", int(r["support"])])
    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    with _whole(Path(f"{stem}_confusion.csv")) as fh:
        writer = csv.writer(fh)
        writer.writerow(["true \\ predicted", *classes])
        writer.writerows([cls, *row] for cls, row in zip(classes, matrix.tolist()))
    plot_confusion(matrix, classes, Path(f"{stem}_confusion.png"))


@contextmanager
def _whole(path: Path):
    """A CSV file to write, renamed into place only once it is whole."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        yield fh


def save_test_scores(folder: Path, name: str, test_ids, truth: np.ndarray, scores: np.ndarray,
                     classes, test: dict, seed: int, identity: dict | None = None) -> str:
    """A multi-label row's per-image test scores, for the table's paired test of mAP:
    ``<folder>/<name>``, an ``.npz`` of ``ids``, ``truth`` (0/1) and ``scores`` in
    sorted-id order (as ``test_correct``), ``classes``, and the mAP of each
    bootstrap resample (``test["mAP_resamples"]``, drawn with ``seed``) with the
    resamples' digest: cells of a row with equal digests are paired at no cost;
    ``identity``, the cell and inputs of the row (JSON), which the reader checks.
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
                            resamples_digest=resamples_digest(len(ids), seed=seed),
                            identity=json.dumps(identity or {}, sort_keys=True))
    return name


def load_test_scores(folder: Path | None, row: dict) -> dict[str, np.ndarray] | None:
    """The arrays of a row's ``test_scores`` file (:func:`save_test_scores`); None when the
    row has none or its file is gone (the cell is then not compared). A file that is there
    but cannot be read is a :class:`~featbank.core.errors.DamagedFile`: a table must not
    silently lose a mark."""
    if folder is None or not row.get("test_scores"):
        return None
    path = stored_path(folder, row["test_scores"])
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            found = {key: data[key] for key in data.files}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DamagedFile(f"{path} (per-image test scores of a {row.get('head') or row['method']} "
                          f"cell) cannot be read ({first_line(err)}); run the cell again with "
                          "--force to rewrite it") from None
    made_for = json.loads(str(found.get("identity", "{}"))) or None
    if made_for is not None and made_for != {"cell": row.get("cell"), "inputs": row.get("inputs")}:
        return None  # the scores of another computation of the cell: not this row's
    return found
