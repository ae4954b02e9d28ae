"""The off-the-shelf grid as functions: train every head on every feature file and task
(:func:`classify`), and read the results store back as the paper-style table
(:func:`results_table`, as a DataFrame; :func:`table`, as the command line prints it).

A split is ``"80/10/10"``, three fractions such as ``(0.7, 0.1, 0.2)`` or a
:class:`featbank.data.tasks.SplitSpec`. The keywords that decide a cell's result
(``normalize``, ``pca``, ``balanced``, ``softmax_recipe``, ``train_fraction``,
``calibrate``, the split's) also select which stored cells a table shows.
Importing this module costs no torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from featbank.api.common import PathLike, SplitLike, quiet
from featbank.classification.config import ClassifyConfig
from featbank.api.groups import with_duplicate_groups
from featbank.data.sources import cached_collection
from featbank.data.tasks import SplitSpec
from featbank.heads.registry import HEADS, HeadOptions
from featbank.store.results import latest_rows, load_results

if TYPE_CHECKING:  # for the signatures only: these import pandas
    import pandas

    from featbank.evaluation.tables import Table


def classify_config(*, cache: PathLike = "cache", head: str = "all", backbone: str = "all",
                    task: str = "all", weights: str = "all", layers: str = "final",
                    split: SplitLike = (0.8, 0.1, 0.1), seed: int = 0,
                    group_by: str | None = None, min_per_class: int | None = None,
                    normalize: str = "standard", pca: int | None = None,
                    balanced: bool = False, softmax_recipe: str = "fast",
                    train_fraction: float = 1.0, calibrate: str | None = None,
                    shots: Sequence[int] = (), repeats: int = 1, ensemble: bool = False,
                    reliability: bool = False, resplit: bool = False, force: bool = False,
                    jobs: int | None = None) -> ClassifyConfig:
    """The checked configuration :func:`classify`'s keywords make (same keywords)."""
    options = HeadOptions(normalize=normalize, pca=pca, balanced=balanced, seed=seed,
                          softmax_recipe=softmax_recipe)
    spec = SplitSpec.of(split, seed=seed, group_by=group_by, min_per_class=min_per_class)
    return ClassifyConfig(heads=head, backbones=backbone, tasks=task, weights=weights,
                          layers=layers, cache_root=str(cache), split=spec, options=options,
                          train_fraction=train_fraction, calibrate=calibrate,
                          shots=tuple(shots), repeats=repeats, ensemble=ensemble,
                          reliability=reliability, resplit=resplit, force=force,
                          jobs=jobs or os.cpu_count() or 1)


def classify(*, collection: str | None = None, head: str = "all", backbone: str = "all",
             task: str = "all", weights: str = "all", layers: str = "final",
             cache: PathLike = "cache", split: SplitLike = (0.8, 0.1, 0.1), seed: int = 0,
             group_by: str | None = None, min_per_class: int | None = None,
             normalize: str = "standard", pca: int | None = None, balanced: bool = False,
             softmax_recipe: str = "fast", train_fraction: float = 1.0,
             calibrate: str | None = None, shots: Sequence[int] = (), repeats: int = 1,
             ensemble: bool = False, reliability: bool = False, resplit: bool = False,
             force: bool = False, jobs: int | None = None, warn=quiet) -> list[dict]:
    """Fill the off-the-shelf grid: every head x feature file x task, on saved splits.

    Cells already in the results store are reused; each new cell's row is
    appended to ``<cache>/<collection>/results.jsonl`` as it finishes. Every
    keyword is a ``classify.py`` option of the same name (docs/classify.md).

    Parameters
    ----------
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    head, backbone, task, weights : str
        What to train, comma-separated or ``all``; ``backbone`` takes ``A@W+B@W`` for
        concatenated feature files. layers : ``final`` or ``all`` (every stored depth).
    cache : path, default="cache"
    split : str, three fractions or SplitSpec, default=(0.8, 0.1, 0.1)
        Train/val/test share of each class; ``seed`` seeds it and the heads,
        ``group_by`` names a column that never straddles two parts
        (``"duplicates"``: the groups of near-duplicates, see :mod:`featbank.api.groups`),
        ``min_per_class`` the smallest class kept; ``resplit`` makes it anew.
    normalize, pca, balanced, softmax_recipe
        The heads' options, as for :func:`featbank.api.stages.fit_head`.
    train_fraction : float
        Train on this seeded share of the training part.
    calibrate : {"temperature", "isotonic", "sigmoid"}, optional
        Calibrate the probabilities on the validation part.
    shots : sequence of int
        Train on k images per class instead, ``repeats`` seeded draws each.
    repeats, ensemble, reliability, force, jobs
        Splits (seeds ``seed + r``), the ensembles' columns, reliability diagrams,
        recompute stored cells, parallel cells.
    warn : callable, optional
        Receives one line per cell and note (default: silent).

    Returns
    -------
    list of dict
        The results rows this call computed (reused cells are not repeated).
    """
    config = classify_config(
        cache=cache, head=head, backbone=backbone, task=task, weights=weights, layers=layers,
        split=split, seed=seed, group_by=group_by, min_per_class=min_per_class,
        normalize=normalize, pca=pca, balanced=balanced, softmax_recipe=softmax_recipe,
        train_fraction=train_fraction, calibrate=calibrate, shots=shots, repeats=repeats,
        ensemble=ensemble, reliability=reliability, resplit=resplit, force=force, jobs=jobs)
    found = with_duplicate_groups(cached_collection(cache=cache, collection=collection),
                                  group_by, cache=cache, warn=warn)
    from featbank.classification.grid import classify as run_grid

    return run_grid(found, config, warn=warn)


def table(collection: str | None = None, *, cache: PathLike = "cache",
          split: SplitLike = (0.8, 0.1, 0.1), seed: int = 0, group_by: str | None = None,
          min_per_class: int | None = None, normalize: str = "standard",
          pca: int | None = None, balanced: bool = False, softmax_recipe: str = "fast",
          train_fraction: float = 1.0, calibrate: str | None = None, repeats: int = 1,
          warn=quiet) -> Table:
    """The paper-style table of a collection's results store (see :func:`results_table`,
    same keywords), as the command line prints it: Markdown with ± and bold marks, notes,
    files. Only results that still describe the cache count
    (:func:`featbank.evaluation.currency.current_rows`); ``warn`` hears how many others
    were left out and why, and a line per damaged line of the store (skipped)."""
    from featbank.evaluation.currency import current_rows
    from featbank.evaluation.tables import Table, build_table

    config = classify_config(cache=cache, split=split, seed=seed, group_by=group_by,
                             min_per_class=min_per_class, normalize=normalize, pca=pca,
                             balanced=balanced, softmax_recipe=softmax_recipe,
                             train_fraction=train_fraction, calibrate=calibrate,
                             repeats=repeats)
    found = cached_collection(cache=cache, collection=collection)
    folder = Path(cache) / found.name
    repeated = config.repeated()
    rows = current_rows(latest_rows(load_results(folder, warn=warn)), folder, warn=warn)
    columns, records = build_table(rows, folder=folder,
                                   split_tag=[c.split.tag for c in repeated],
                                   variant=[c.variant for c in repeated], head_order=list(HEADS))
    return Table(columns, records, found.name)


def results_table(collection: str | None = None, *, cache: PathLike = "cache",
                  split: SplitLike = (0.8, 0.1, 0.1), seed: int = 0,
                  group_by: str | None = None, min_per_class: int | None = None,
                  normalize: str = "standard", pca: int | None = None,
                  balanced: bool = False, softmax_recipe: str = "fast",
                  train_fraction: float = 1.0, calibrate: str | None = None,
                  repeats: int = 1) -> pandas.DataFrame:
    """The paper-style table of a collection's results store, as a DataFrame.

    Rows are task x backbone x weights, columns the heads (with their
    non-default settings), ensembles and fine-tuning; a cell is the test
    top-1 (mAP for a multi-label task), or the mean over ``repeats``.

    Parameters
    ----------
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    cache : path, default="cache"
    split, seed, group_by, min_per_class, repeats
        The split the cells were trained on (with ``repeats``: the first seed).
    normalize, pca, balanced, softmax_recipe, train_fraction, calibrate
        The settings of the cells that count, as given to :func:`classify`.

    Returns
    -------
    pandas.DataFrame
        Indexed by (task, backbone, weights, dim); ``df.attrs["spread"]`` holds
        each cell's ± (half the 95 % interval, or the standard deviation over
        repeats) and ``df.attrs["bold"]`` the cells not significantly worse
        than their row's best, both keyed by (row index, column).
    """
    return table(collection, cache=cache, split=split, seed=seed, group_by=group_by,
                 min_per_class=min_per_class, normalize=normalize, pca=pca, balanced=balanced,
                 softmax_recipe=softmax_recipe, train_fraction=train_fraction,
                 calibrate=calibrate, repeats=repeats).frame()
