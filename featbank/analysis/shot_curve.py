"""How many labelled images per class a collection needs: a head's test score against k,
the training images per class (``classify.py --shots``).

Reads the paper-style table of a collection's results store: each k-shot column
(``logreg (4-shot)``) is a point, the mean over the seeded draws with their
standard deviation, and the head trained on the whole training part ends each
line (at the largest class's count, drawn at the right). One line per backbone,
weights and head; k on a log axis.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from featbank.analysis.common import file_label, output_folder
from featbank.core.errors import MissingFile
from featbank.core.fileio import atomic_path, atomic_write_json
from featbank.evaluation.plots import plot_shot_curve
from featbank.evaluation.tables import INDEX, Table

SHOT = re.compile(r"^(?P<head>.+?) \((?:(?P<rest>.*), )?(?P<k>\d+)-shot\)$")


def shot_curve(table: Table, cache_root: str | Path, *, heads: str = "all",
               tasks: str = "all") -> list[dict]:
    """A plot (PNG) and its points (JSON) per task of ``table``: a line per backbone,
    weights and head over the k-shot cells stored; returns one report per task."""
    wanted = None if heads == "all" else {h.strip() for h in heads.split(",")}
    task_names = list(dict.fromkeys(r["task"] for r in table.records))
    if tasks != "all":
        task_names = [t for t in task_names if t.split(" (")[0] in tasks.split(",")]
    reports = []
    for task in task_names:
        lines = _lines([r for r in table.records if r["task"] == task], table.columns, wanted)
        if lines:
            reports.append(_write(table.collection, cache_root, task, lines))
    if not reports:
        raise MissingFile("no k-shot results to draw; run classify.py --shots 1,4,16 first")
    return reports


def _lines(records: list[dict], columns: list[str], wanted) -> list[dict]:
    shot_columns = {}
    for column in columns:
        match = SHOT.match(column) if column not in INDEX else None
        if match and (wanted is None or match["head"] in wanted):
            shot_columns.setdefault(match["head"], []).append((int(match["k"]), column))
    lines = []
    for record in records:
        for head, found in shot_columns.items():
            points = [{"shots": k, "score": record[c], "spread": record["spread"].get(c),
                       "draws": record["repeats"].get(c)}
                      for k, c in sorted(found) if record.get(c) is not None]
            if not points:
                continue
            lines.append({"backbone": record["backbone"], "weights": record["weights"],
                          "head": head, "label": f"{record['backbone']} · {record['weights']} "
                                                 f"· {head}", "points": points,
                          "all_training_images": record.get(head)})
    return lines


def _write(collection: str, cache_root, task: str, lines: list[dict]) -> dict:
    folder = output_folder(cache_root, collection, "shot-curve")
    stem = f"shot_curve__{file_label(task)}"
    metric = "mAP" if task.endswith("(mAP)") else "top-1"
    title = (f"{collection} / {task}: test {metric} against labelled images per class "
             "(mean ± standard deviation over the draws)")
    with atomic_path(folder / f"{stem}.png") as tmp:
        plot_shot_curve(lines, tmp, title=title, ylabel=f"test {metric}")
    report = {"command": "shot-curve", "collection": collection, "task": task,
              "metric": metric, "lines": lines, "plot": str(folder / f"{stem}.png"),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(folder / f"{stem}.json", report)
    report["json"] = str(folder / f"{stem}.json")
    return report
