"""Off-the-shelf classification: every head x backbone x task on cached features.

A *cell* is one feature file (backbone x weights) x task x head, trained on the
task's saved split. Cells are independent: they run in parallel (joblib), each
one's row is appended to ``results.jsonl`` as it finishes, and cells already
in the store are reused (unless ``force``).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import joblib

from featbank.classification.cells import (
    cell_inputs,
    cell_key,
    run_cell,
    stale_reason,
    task_splits,
    tested_ids,
)
from featbank.classification.config import ClassifyConfig
from featbank.classification.ensembles import ensembles
from featbank.core.errors import BadInput
from featbank.core.text import count
from featbank.data.collection import Collection
from featbank.heads.registry import resolve_heads
from featbank.models.registry import parse_selection
from featbank.store.features import select_features
from featbank.store.results import append_result, latest_rows, load_results

__all__ = ["ClassifyConfig", "classify"]


def classify(collection: Collection, config: ClassifyConfig, *, warn=print) -> list[dict]:
    """Fill the grid, on each of ``config.repeats`` seeded splits (with ``shots``: on the
    one split, ``repeats`` draws of each k); returns the rows computed by this call
    (reused cells excluded)."""
    new = []
    for repeat in config.repeated():
        if config.repeats > 1 and not config.shots:
            warn(f"repeat with seed {repeat.split.seed} (split {repeat.split.tag})")
        new += _classify_once(collection, repeat, warn=warn)
    return new


def _classify_once(collection: Collection, config: ClassifyConfig, *, warn) -> list[dict]:
    heads = resolve_heads(config.heads)
    folder = Path(config.cache_root) / collection.name
    entries = select_features(folder, parse_selection(config.backbones), config.weights,
                              layers=config.layers, warn=warn)
    if config.ensemble and len(entries) < 2:
        raise BadInput(f"--ensemble needs at least two feature sources, found "
                         f"{len(entries)}; name them, e.g. --backbone resnet50,vgg19 or "
                         "squeezenet1_1@imagenet,squeezenet1_1@random")
    splits = task_splits(collection, config.tasks, config.split, folder, warn=warn,
                         resplit=config.resplit)
    for task, split in splits.items():  # refused in one line before any cell runs
        if split.multi_label and (config.shots or config.calibrate):
            raise BadInput(f"task {task!r} is multi-label; --shots and --calibrate are for "
                           "single-label tasks")
        for entry in entries:  # a fine-tuned trunk's images never tested on: said first
            tested_ids(split, entry, warn)
    todo, stale = _todo(collection.name, splits, entries, heads, config, load_results(folder),
                        warn)
    jobs = joblib.Parallel(n_jobs=min(config.jobs, max(1, len(todo))),
                           return_as="generator_unordered")
    new = []
    for row in jobs(joblib.delayed(run_cell)(folder=folder, collection=collection.name, task=t,
                                             split=splits[t], entry=e, head=h, config=config,
                                             shot=s)
                    for t, e, h, s in todo):
        if not append_result(folder, row, replace=config.force or row["cell"] in stale):
            warn(f"{row['task']} / {row['backbone']} / {row['head']}: another run stored this "
                 "cell meanwhile; its row is kept")
            continue
        new.append(row)
        few = f" ({row['shots']}-shot, draw {row['draw']})" if row.get("shots") else ""
        warn(f"{row['task']} / {row['backbone']} / {row['head']}{few}: test top-1 "
             f"{row['top1']:.3f} ({row['seconds']:.1f} s)")
    if config.ensemble:
        new += ensembles(folder, collection.name, splits, entries, heads, config, warn)
    return new


def _todo(collection: str, splits: dict, entries: list, heads: list[str], config: ClassifyConfig,
          rows: list[dict], warn) -> tuple[list[tuple], set[str]]:
    """The cells to train: not stored, or stored from other inputs (``--force``: every one),
    and the keys of the stored rows they replace; says how many are reused and why the
    others are trained again."""
    stored = {r.get("cell"): r for r in latest_rows(rows)}
    todo, stale, reasons = [], set(), Counter()
    # with --shots: the whole training part too (the curve's right end), then each draw
    shots = [None] + [(k, d) for k in config.shots for d in range(config.repeats)]
    cells = [(t, e, h, s) for t in splits for e in entries for h in heads for s in shots]
    for task, entry, head, shot in cells:
        key = cell_key(collection, task, entry, head, config, shot)
        row = stored.get(key)
        reason = "--force" if config.force else stale_reason(row, cell_inputs(entry, splits[task]))
        if reason is not None:
            todo.append((task, entry, head, shot))
            if row is not None:
                reasons[reason] += 1
                stale.add(key)
    reused = len(cells) - len(todo)
    if reused:
        warn(f"reusing {count(reused, 'cell')} already in results.jsonl, computed from these "
             "features and splits (--force to recompute)")
    for reason, n in reasons.items():
        warn(f"{reason}: retraining {count(n, 'cell')}")
    return todo, stale


