"""Combinations against their members: does ``A+B`` (features concatenated) or an
ensemble of A and B beat the better of A and B alone?

Gonthier et al. report that an ensemble beats each of its members; on a small
test set the answer needs the paired test of the table's marks (McNemar's exact
test on top-1, a paired bootstrap test on mAP), between the combination and its
best member, on the same test images.
"""
from __future__ import annotations

from pathlib import Path

from featbank.evaluation.metrics import score_of
from featbank.evaluation.tables import paired_data, paired_test
from featbank.store.provenance import FINAL
from featbank.store.results import latest_rows


def versus_best_member(rows: list[dict], *, folder: Path | None = None) -> list[dict]:
    """One record per combination row of ``rows`` (a concatenation ``A+B`` or an
    ensemble, trunk outputs only) whose members each have a row with the same task,
    head, split and settings: the combination's score, its best member's, and the
    p-value of the paired test between them (None when they were tested on
    different images or lack per-image results).
    """
    rows = latest_rows(rows)
    singles = {_key(r, r["backbone"], r["weights"]): r for r in rows
               if r["method"] == "off-the-shelf" and "+" not in r["backbone"] and _final(r)}
    found = []
    for row in rows:
        if "+" not in row["backbone"] or row["method"] not in ("off-the-shelf", "ensemble") \
                or not _final(row):
            continue
        parts = zip(row["backbone"].split("+"), row["weights"].split("+"))
        members = [singles.get(_key(row, backbone, weights)) for backbone, weights in parts]
        if not members or None in members:
            continue
        metric, value, _ = score_of(row)
        best = max(members, key=lambda m: score_of(m)[1])
        p = None
        if best.get("test_ids_sha256") == row.get("test_ids_sha256"):
            mine, theirs = paired_data(row, metric, folder), paired_data(best, metric, folder)
            if mine is not None and theirs is not None:
                p = paired_test(metric, theirs, mine)
        found.append({"task": row["task"], "combination": row["backbone"],
                      "kind": "ensemble" if row["method"] == "ensemble" else "concatenation",
                      "head": row["head"], "metric": metric, "score": value,
                      "best_member": best["backbone"], "best_member_score": score_of(best)[1],
                      "p": p})
    return found


def _final(row: dict) -> bool:
    """Whether a row's features are trunk outputs (rows from before layers are)."""
    return (row.get("layer") or FINAL) == FINAL


def _key(row: dict, backbone: str, weights: str) -> tuple:
    return (row["task"], backbone, weights, row.get("head"), row.get("split_tag"),
            row.get("variant"))


def describe(record: dict) -> str:
    """One line: ``label / A+B logreg (concatenation): 0.971 against xception's 0.950,
    McNemar p = 0.125``."""
    test = "McNemar" if record["metric"] == "top1" else "paired bootstrap"
    p = "not paired" if record["p"] is None else f"{test} p = {record['p']:.3g}"
    return (f"{record['task']} / {record['combination']} {record['head']} ({record['kind']}): "
            f"{record['score']:.3f} against {record['best_member']}'s "
            f"{record['best_member_score']:.3f}, {p}")
