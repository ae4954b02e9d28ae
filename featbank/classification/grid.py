"""Off-the-shelf classification: every head x backbone x task on cached features.

A *cell* is one feature file (backbone x weights) x task x head, trained on the
task's saved split. Cells are independent: they run in parallel (joblib), each
one's row is appended to ``results.jsonl`` as it finishes, and cells already
in the store are reused (unless ``force``).
"""
from __future__ import annotations

from pathlib import Path

import joblib

from featbank.classification.cells import cell_key, run_cell, task_splits
from featbank.classification.config import ClassifyConfig
from featbank.classification.ensembles import ensembles
from featbank.core.errors import BadInput
from featbank.data.collection import Collection
from featbank.heads.registry import resolve_heads
from featbank.models.registry import parse_selection
from featbank.store.features import select_features
from featbank.store.results import append_result, load_results

__all__ = ["ClassifyConfig", "classify"]


def classify(collection: Collection, config: ClassifyConfig, *, warn=print) -> list[dict]:
    """Fill the grid, on each of ``config.repeats`` seeded splits; returns the rows computed
    by this call (reused cells excluded)."""
    new = []
    for repeat in config.repeated():
        if config.repeats > 1:
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
    done = {r.get("cell") for r in load_results(folder)}
    todo = [(task, entry, head) for task in splits for entry in entries for head in heads
            if config.force or cell_key(collection.name, task, entry, head, config) not in done]
    if len(todo) < len(splits) * len(entries) * len(heads):
        warn(f"reusing {len(splits) * len(entries) * len(heads) - len(todo)} cells already "
             "in results.jsonl (--force to recompute)")
    jobs = joblib.Parallel(n_jobs=min(config.jobs, max(1, len(todo))),
                           return_as="generator_unordered")
    new = []
    for row in jobs(joblib.delayed(run_cell)(folder=folder, collection=collection.name, task=t,
                                             split=splits[t], entry=e, head=h, config=config)
                    for t, e, h in todo):
        if not append_result(folder, row, replace=config.force):
            warn(f"{row['task']} / {row['backbone']} / {row['head']}: another run stored this "
                 "cell meanwhile; its row is kept")
            continue
        new.append(row)
        warn(f"{row['task']} / {row['backbone']} / {row['head']}: test top-1 {row['top1']:.3f} "
             f"({row['seconds']:.1f} s)")
    if config.ensemble:
        new += ensembles(folder, collection.name, splits, entries, heads, config, warn)
    return new


