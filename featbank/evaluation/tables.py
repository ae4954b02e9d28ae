"""The paper-style table: rows task x backbone x weights, a column per head and setting.

Built from the results store only. A cell shows test top-1 (mAP for a
multi-label task) with half its 95 % interval, or over repeats the mean and
the standard deviation; bold marks come from paired tests on the same test
images (:func:`mark_cells`).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featbank.core.fileio import atomic_path, atomic_write_json
from featbank.evaluation.metrics import score_of
from featbank.evaluation.reports import load_test_scores
from featbank.evaluation.stats import RESAMPLES, mcnemar_p, paired_map_p, paired_p, unpack_hits
from featbank.store.provenance import weights_label
from featbank.store.results import latest_rows

SIGNIFICANCE = 0.05  # of the paired tests behind the table's marks
FINAL_PLACE = 10**6  # where a trunk's output sorts among its layers: after them all


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
             "calibrate": (None, "{} calibrated"),
             "shots": (None, "{}-shot"),
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


def build_table(rows: list[dict], *, split_tag: str | list[str] | None = None,
                variant: str | list[str] | None = None, folder: Path | None = None,
                head_order: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """Rows task x backbone x weights; a column per head and its settings, per head ensemble
    (``--ensemble``: the row of the backbones it averages), plus fine-tuning.

    Only results on ``split_tag`` (several: the seeded splits of ``--repeats``)
    and with the off-the-shelf ``variant`` (or variants, one per repeat) count. A cell shows test top-1
    (mAP for a multi-label task) with, in ``spread``, the half-width of its 95 %
    bootstrap interval, or over repeats the mean and the standard deviation.
    ``marked`` lists the cells of a row not significantly worse than its best
    (:func:`mark_cells`; mAP cells need their ``test_scores``, files in the store's
    ``folder``). Columns come in one order whatever order the rows were stored in:
    heads in ``head_order`` (the registry's; others after, by name), then their
    ensembles, then fine-tuning. Returns (columns, records).
    """
    tags = [split_tag] if isinstance(split_tag, str) else split_tag
    variants = [variant] if isinstance(variant, str) else variant
    rows = [r for r in latest_rows(rows) if r.get("split") == "test"
            and (tags is None or r.get("split_tag") in tags)]
    rows = [r for r in rows if r["method"] == "fine-tuning"
            or (r["method"] in ("off-the-shelf", "ensemble")
                and (variants is None or r.get("variant") in variants))]
    order = {"off-the-shelf": 0, "ensemble": 1, "fine-tuning": 2}
    rank = {head: k for k, head in enumerate(head_order or [])}

    def place(row: dict) -> tuple:
        head = row.get("head") or ""
        return (order[row["method"]], rank.get(head, len(rank)), head, row.get("shots") or 0,
                column_label(row))  # k-shot columns by k: 1, 4, 16
    heads = list(dict.fromkeys(column_label(r) for r in sorted(rows, key=place)))
    grouped: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        key = (r["task"], r["backbone"], r["weights"], *layer_place(r))
        grouped.setdefault(key, {}).setdefault(column_label(r), []).append(r)
    records = []
    for key in sorted(grouped):
        cells = grouped[key]
        first = next(iter(cells.values()))[0]
        metric = score_of(first)[0]
        record = {"task": key[0] + (" (mAP)" if metric == "mAP" else ""), "backbone": key[1],
                  "weights": row_weights(first), "layer": key[4],
                  "layer_index": key[3] if key[3] < FINAL_PLACE else None,
                  "dim": first.get("feature_dim"), "spread": {}, "repeats": {}}
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
    layered = any(r["layer"] != "final" for r in records)
    return ["task", "backbone", "weights", *(["layer"] if layered else []), "dim", *heads], records


def layer_place(row: dict) -> tuple[int, str]:
    """(place from the input, name) of a row's layer; the trunk's output (``final``, and
    rows from before layers) after every stage, a pool other than the model's named."""
    layer = row.get("layer") or "final"
    pool = row.get("pool") or "model"
    name = layer if layer != "final" or pool == "model" else f"final ({pool})"
    if layer == "final":
        return FINAL_PLACE, name
    return int(row.get("layer_index") or 0), name


def mark_cells(cells: dict[str, dict], *, folder: Path | None = None) -> list[str]:
    """The columns whose row is not significantly worse than the best one's: the best,
    and those a paired test on the same test images cannot tell from it at
    ``SIGNIFICANCE``: McNemar's exact test of top-1 hits (``test_correct``), or for
    mAP a paired bootstrap test of the per-image scores (``test_scores``, files in
    ``folder``). Rows without them, or on other test images, are not compared (and
    not marked)."""
    metric = score_of(next(iter(cells.values())))[0]
    paired = {column: data for column, row in cells.items()
              if (data := paired_data(row, metric, folder)) is not None}
    if not paired:
        return []
    best_column = max(paired, key=lambda c: score_of(cells[c])[1])
    best, best_data = cells[best_column], paired[best_column]
    marked = []
    for column, data in paired.items():
        if cells[column].get("test_ids_sha256") != best.get("test_ids_sha256"):
            continue
        if column != best_column:
            p = paired_test(metric, best_data, data)
            if p is None or p < SIGNIFICANCE:
                continue
        marked.append(column)
    return marked


def paired_data(row: dict, metric: str, folder: Path | None = None):
    """What a paired test needs of a row: its per-image top-1 hits, or for mAP its stored
    per-image scores; None when the row has none."""
    if metric == "top1" and row.get("test_correct"):
        return unpack_hits(row["test_correct"], row["n_test"])
    if metric == "mAP":
        return load_test_scores(folder, row)
    return None


def paired_test(metric: str, best, other) -> float | None:
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
            layer = f" / {r['layer']}" if "layer" in columns else ""
            notes.append(f"{r['task']} / {r['backbone']} / {r['weights']}{layer}: "
                         + ", ".join(parts))
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
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    atomic_write_json(json_path, {"columns": columns, "rows": records})
    return csv_path, json_path


INDEX = ("task", "backbone", "weights", "layer", "dim")


@dataclass
class Table:
    """A built table (:func:`build_table`): its columns and one record per row, each with
    its cells, ``spread`` (±), ``marked`` (bold) and ``chosen`` (tuned settings)."""

    columns: list[str]
    records: list[dict]
    collection: str = ""

    def markdown(self) -> str:
        return to_markdown(self.columns, self.records)

    def notes(self) -> list[str]:
        return table_notes(self.columns, self.records)

    def write(self, folder: Path) -> tuple[Path, Path]:
        return write_table(folder, self.columns, self.records)

    def frame(self):
        """As a pandas DataFrame indexed by (task, backbone, weights, dim), with ``layer``
        after weights when the table has layers, a column per head; ``attrs["spread"]``
        and ``attrs["bold"]`` key their cells by (index, column)."""
        import pandas as pd

        index = [c for c in self.columns if c in INDEX]
        heads = self.columns[len(index):]
        frame = pd.DataFrame([{c: r.get(c) for c in self.columns} for r in self.records],
                             columns=self.columns).set_index(index)
        keys = [tuple(r[c] for c in index) for r in self.records]
        frame.attrs["spread"] = {(key, c): v for key, r in zip(keys, self.records)
                                 for c, v in r["spread"].items()}
        frame.attrs["bold"] = {(key, c) for key, r in zip(keys, self.records)
                               for c in r["marked"]}
        return frame.astype({c: float for c in heads})
