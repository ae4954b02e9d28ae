"""The test score with the leaked test images left out, beside the full one.

A test image with a near-duplicate in the training or validation part
(``analyze.py leaks``) is partly a memory test. Every results row keeps its
per-image test hits (``test_correct``, in sorted-id order, with the digest of
those ids), so its top-1 without the leaked images needs no refit: the hits
of the test ids that are not leaked, averaged. A row whose test ids cannot be
rebuilt from the split (a θ̂ row that left out its trunk's training images)
is left out rather than guessed at.
"""
from __future__ import annotations

import numpy as np

from featbank.data.tasks import ids_digest
from featbank.evaluation.stats import accuracy_ci, unpack_hits


def without_leaks(rows: list[dict], test_ids: list[str], leaked: set[str]) -> list[dict]:
    """Per row tested on exactly ``test_ids``: its top-1, and its top-1 and bootstrap
    interval (as the table's) over the test ids not in ``leaked``."""
    ids = sorted(test_ids)
    digest = ids_digest(ids)
    keep = np.array([i not in leaked for i in ids])
    out = []
    for row in rows:
        if row.get("test_ids_sha256") != digest or "test_correct" not in row:
            continue
        hits = unpack_hits(row["test_correct"], len(ids))[keep]
        interval = accuracy_ci(hits) if len(hits) else [None, None]
        out.append({"backbone": row["backbone"], "weights": row.get("weights_label")
                    or row["weights"], "method": row["method"], "head": row.get("head"),
                    "top1": float(row["top1"]),
                    "top1_without_leaks": float(hits.mean()) if len(hits) else None,
                    "ci_without_leaks": interval, "n_test": len(ids),
                    "n_left_out": int((~keep).sum())})
    return out
