"""Which depth transfers: a head's test score against the layer its features came from.

Reads the paper-style table of a collection's results store (the cells
``classify.py --layers`` trained), so each point is a stored result with its
95 % interval (or the standard deviation over repeats), on the same split as
the table. One line per backbone, weights and head; θ and a fine-tuned θ̂ of
one backbone on one plot show what fine-tuning changed, and where.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from featbank.analysis.common import file_label, output_folder
from featbank.core.errors import MissingFile
from featbank.core.fileio import atomic_path, atomic_write_json
from featbank.evaluation.plots import plot_layer_curve
from featbank.evaluation.tables import INDEX, Table


def layer_curve(table: Table, cache_root: str | Path, *, heads: str = "all",
                tasks: str = "all") -> list[dict]:
    """A plot (PNG) and its points (JSON) per task of ``table``: a line per backbone,
    weights and head over the layers stored; returns one report per task."""
    columns = [c for c in table.columns if c not in INDEX]
    wanted = None if heads == "all" else {h.strip() for h in heads.split(",")}
    columns = [c for c in columns if wanted is None or c.split(" (")[0] in wanted]
    task_names = list(dict.fromkeys(r["task"] for r in table.records))
    if tasks != "all":
        task_names = [t for t in task_names if t.split(" (")[0] in tasks.split(",")]
    reports = []
    for task in task_names:
        lines = _lines([r for r in table.records if r["task"] == task], columns)
        if not lines:
            continue
        reports.append(_write(table.collection, cache_root, task, lines))
    if not reports:
        raise MissingFile("no results of several layers to draw; run extract.py --layers all "
                          "and classify.py --layers all first")
    return reports


def _lines(records: list[dict], columns: list[str]) -> list[dict]:
    """A line per (backbone, weights, head) that has results on at least two layers."""
    lines = []
    networks = dict.fromkeys((r["backbone"], r["weights"]) for r in records)
    for backbone, weights in networks:
        mine = [r for r in records if (r["backbone"], r["weights"]) == (backbone, weights)]
        last = max([r["layer_index"] or 0 for r in mine] + [0])
        for column in columns:
            points = [{"name": r["layer"],
                       "x": r["layer_index"] if r["layer_index"] is not None else last + 1,
                       "score": r[column], "spread": r["spread"].get(column)}
                      for r in mine if r.get(column) is not None]
            if len(points) < 2:
                continue
            points.sort(key=lambda p: p["x"])
            for p in points:
                p["depth"] = round(p["x"] / points[-1]["x"], 4)
            lines.append({"backbone": backbone, "weights": weights, "head": column,
                          "label": f"{backbone} · {weights} · {column}", "points": points})
    return lines


def _write(collection: str, cache_root, task: str, lines: list[dict]) -> dict:
    folder = output_folder(cache_root, collection, "layer-curve")
    stem = f"layer_curve__{file_label(task)}"
    metric = "mAP" if task.endswith("(mAP)") else "top-1"
    title = (f"{collection} / {task}: test {metric} of the heads trained on each layer's "
             "features (± half the 95 % interval)")
    with atomic_path(folder / f"{stem}.png") as tmp:
        plot_layer_curve(lines, tmp, title=title, ylabel=f"test {metric}")
    report = {"command": "layer-curve", "collection": collection, "task": task,
              "metric": metric, "lines": lines, "plot": str(folder / f"{stem}.png"),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(folder / f"{stem}.json", report)
    report["json"] = str(folder / f"{stem}.json")
    return report
