"""What is wrong with a collection, as DataFrames: likely label issues, leaks between the
parts of a split, outliers, and which images to annotate first.

Each function runs the ``analyze.py`` sub-command of its name on a collection
of the cache, writes what it writes (CSV, contact sheet, HTML page, JSON
report under ``<cache>/<collection>/analysis/``), and returns the CSV's rows
as a :class:`pandas.DataFrame`, with the JSON report in ``df.attrs["report"]``.
"""
from __future__ import annotations

import pandas as pd

from featbank.analysis.config import (
    DUPLICATE_THRESHOLD,
    LabelIssuesConfig,
    LeaksConfig,
    OutliersConfig,
)
from featbank.analysis.geometry import MIN_INLIERS
from featbank.api.common import PathLike, SplitLike, quiet
from featbank.api.groups import with_duplicate_groups
from featbank.data.sources import cached_collection
from featbank.data.tasks import SplitSpec


def _frame(report: dict, columns: list[str]) -> pd.DataFrame:
    rows = report.pop("rows")
    frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else columns)
    frame.attrs["report"] = report
    return frame


def label_issues(backbone: str, task: str, *, collection: str | None = None,
                 weights: str = "all", head: str = "logreg", folds: int = 5,
                 cache: PathLike = "cache", split: SplitLike = (0.8, 0.1, 0.1), seed: int = 0,
                 group_by: str | None = None, min_per_class: int | None = None,
                 sheet: int = 24, warn=quiet) -> pd.DataFrame:
    """Every labelled image of ``task``, the likeliest cataloguing error first.

    Out-of-fold probabilities of ``head`` (``folds``-fold over train+val of the
    saved split, the test part from a fit on train+val) ranked by cleanlab's
    label quality score (self-confidence); ``issue`` marks those
    ``cleanlab.filter.find_label_issues`` flags.

    Parameters
    ----------
    backbone, task : str
    collection, weights, cache
        Which feature file, as for :func:`featbank.api.analyses.retrieve`.
    head : str, default="logreg"
        A head with probabilities: logreg, softmax, rf or knn.
    folds : int, default=5
    split, seed, group_by, min_per_class
        The task's saved split, as for ``classify``.
    sheet : int, default=24
        Images on the contact sheet.

    Returns
    -------
    DataFrame
        ``id, given, suggested, score, part, issue`` (multi-label: also
        ``likely_missing``, ``likely_wrong``), ``score`` ascending.
    """
    from featbank.analysis.label_issues import label_issues as rank

    config = LabelIssuesConfig(
        backbone=backbone, task=task, weights=weights, head=head, folds=folds,
        split=SplitSpec.of(split, seed=seed, group_by=group_by, min_per_class=min_per_class),
        sheet=sheet, cache_root=str(cache))
    found = with_duplicate_groups(cached_collection(cache=cache, collection=collection),
                                  group_by, cache=cache, warn=warn)
    report = rank(found, config, warn=warn)
    return _frame(report, ["id", "given", "suggested", "score", "part", "issue"])


def leaks(backbone: str, task: str, *, collection: str | None = None, weights: str = "all",
          threshold: float = DUPLICATE_THRESHOLD, k: int = 10, rotations: bool = True,
          verify: str = "auto", min_inliers: int = MIN_INLIERS, cache: PathLike = "cache",
          split: SplitLike = (0.8, 0.1, 0.1), seed: int = 0, group_by: str | None = None,
          min_per_class: int | None = None, sheet: int = 12,
          weights_file: PathLike | None = None, device: str = "cpu", progress: bool = True,
          warn=quiet) -> pd.DataFrame:
    """Near-duplicate pairs (confirmed, rotated copies included) whose images fall in two
    parts of ``task``'s saved split.

    Parameters
    ----------
    backbone, task : str
    threshold, k, rotations, verify, min_inliers
        How pairs are found and confirmed, as for :func:`featbank.api.analyses.duplicates`.
    split, seed, group_by, min_per_class
        The task's saved split.
    sheet, weights_file, device, progress, warn
        As for :func:`featbank.api.analyses.duplicates`.

    Returns
    -------
    DataFrame
        ``id_a, part_a, id_b, part_b, cosine, rotation, mirrored, inliers``, the
        earlier part as ``a``; ``attrs["report"]`` has ``by_parts`` and
        ``test_leaked``.
    """
    from featbank.analysis.leaks import COLUMNS
    from featbank.analysis.leaks import leaks as find

    config = LeaksConfig(
        backbone=backbone, task=task, weights=weights, threshold=threshold, k=k,
        rotations=rotations, verify=verify, min_inliers=min_inliers,
        split=SplitSpec.of(split, seed=seed, group_by=group_by, min_per_class=min_per_class),
        sheet=sheet, weights_file=None if weights_file is None else str(weights_file),
        device=device, cache_root=str(cache), progress=progress)
    found = with_duplicate_groups(cached_collection(cache=cache, collection=collection),
                                  group_by, cache=cache, warn=warn)
    report = find(found, config, warn=warn)
    return _frame(report, COLUMNS)


def outliers(backbone: str, *, collection: str | None = None, weights: str = "all",
             k: int = 10, cache: PathLike = "cache", sheet: int = 24,
             warn=quiet) -> pd.DataFrame:
    """Every image by its mean cosine distance to its ``k`` nearest neighbours, the
    farthest first.

    Parameters
    ----------
    backbone : str
    collection, weights, cache
        Which feature file, as for :func:`featbank.api.analyses.retrieve`.
    k : int, default=10
        Neighbours the score averages over.
    sheet : int, default=24
        Images on the contact sheet.

    Returns
    -------
    DataFrame
        ``rank, id, score, nearest`` (the nearest neighbour's id).
    """
    from featbank.analysis.selection import outliers as score

    config = OutliersConfig(backbone=backbone, weights=weights, k=k, sheet=sheet,
                            cache_root=str(cache))
    report = score(cached_collection(cache=cache, collection=collection), config, warn=warn)
    return _frame(report, ["rank", "id", "score", "nearest"])


def select(backbone: str, n: int, *, collection: str | None = None, weights: str = "all",
           labelled: PathLike | None = None, cache: PathLike = "cache", sheet: int = 24,
           warn=quiet) -> pd.DataFrame:
    """``n`` images to annotate first, by k-center greedy on cosine distance (Sener &
    Savarese 2018).

    Parameters
    ----------
    backbone : str
    n : int
        Images to pick.
    collection, weights, cache
        Which feature file.
    labelled : path, optional
        A file of ids already annotated, one a line: the picks start from them
        (default: from the image nearest the collection's mean).
    sheet : int, default=24

    Returns
    -------
    DataFrame
        ``rank, id, radius_after`` (the covering radius after the pick),
        ``outlier_score``.
    """
    from featbank.analysis.selection import outliers as pick

    config = OutliersConfig(backbone=backbone, weights=weights, n=n, sheet=sheet,
                            labelled=None if labelled is None else str(labelled),
                            cache_root=str(cache))
    report = pick(cached_collection(cache=cache, collection=collection), config, warn=warn)
    return _frame(report, ["rank", "id", "radius_after", "outlier_score"])


def without_leaks(collection: str | None = None, *, cache: PathLike = "cache",
                  split: SplitLike = (0.8, 0.1, 0.1), seed: int = 0,
                  group_by: str | None = None, min_per_class: int | None = None,
                  warn=quiet) -> pd.DataFrame:
    """The stored results' top-1 with the leaked test images left out, beside the full one.

    For every task whose saved split has a current ``leaks`` report (the newest
    on that split, its feature file unchanged since); ``classify.py`` prints it
    beside its table.

    Parameters
    ----------
    collection, cache
    split, seed, group_by, min_per_class
        The split of the table, as for ``classify``.

    Returns
    -------
    DataFrame
        ``task, backbone, weights, method, head, top1, top1_without_leaks,
        ci_without_leaks, n_test, n_left_out``.
    """
    from pathlib import Path

    from featbank.analysis.leaks import current_leaks, stored_rows
    from featbank.data.saved_splits import load_or_make_split, split_path
    from featbank.evaluation.leakfree import without_leaks as rescore

    found = cached_collection(cache=cache, collection=collection)
    folder = Path(cache) / found.name
    spec = SplitSpec.of(split, seed=seed, group_by=group_by, min_per_class=min_per_class)
    out = []
    for task in found.tasks:
        if not split_path(folder, task, spec).is_file():
            continue  # no split saved: nothing was classified on it
        saved = load_or_make_split(found, task, spec, folder, warn=warn)
        leaked = current_leaks(folder, saved)
        if leaked:
            out += [{"task": task, **row} for row in rescore(
                stored_rows(folder, task, saved), saved.select("test")[0], leaked)]
    return pd.DataFrame(out, columns=["task", "backbone", "weights", "method", "head", "top1",
                                      "top1_without_leaks", "ci_without_leaks", "n_test",
                                      "n_left_out"])
