"""The analyses of cached features as functions: retrieval, near-duplicates, CKA, 2-D maps,
export, the layer and k-shot curves (those that run trunks over images:
:mod:`featbank.api.trunks`; on arrays, no files: :mod:`featbank.api.arrays`).

Each builds the sub-command's checked configuration from keywords, runs it
on a collection of the cache and returns its report: the dict that
``analyze.py`` writes as JSON (figures, settings, and the paths of the
pictures it drew under ``<cache>/<collection>/analysis/<sub-command>/``).
"""
from __future__ import annotations

from typing import Sequence

from featbank.analysis.config import (
    DUPLICATE_THRESHOLD,
    CkaConfig,
    DuplicatesConfig,
    ExportConfig,
    MapConfig,
    RetrieveConfig,
)
from featbank.api.common import PathLike, SplitLike, quiet
from featbank.data.sources import cached_collection
from featbank.data.tasks import SplitSpec


def retrieve(backbone: str, task: str | None = None, *, collection: str | None = None,
             weights: str = "all", k: int = 10, queries: Sequence[PathLike] = (),
             cache: PathLike = "cache", split: SplitLike = (0.8, 0.1, 0.1), seed: int = 0,
             group_by: str | None = None, min_per_class: int | None = None,
             sheet: int = 8, weights_file: PathLike | None = None, device: str = "cpu",
             progress: bool = True, warn=quiet) -> dict:
    """Similarity retrieval on cached features (Cetinic et al. §5.5).

    Each test image of ``task``'s saved split queries the train and
    validation images by cosine similarity; a neighbour is relevant when it
    has the query's label. With ``queries``, image files are run through the
    feature file's trunk and matched against the whole collection instead.

    Parameters
    ----------
    backbone : str
        The registry name the features were extracted with.
    task : str, optional
        The label column (needed unless ``queries`` are given).
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    weights : str, default="all"
        ``imagenet``, ``random`` or a sha256 prefix, when the backbone has
        several feature files.
    k : int, default=10
        Neighbours per query.
    queries : sequence of paths, optional
        Image files to look up.
    cache : path, default="cache"
    split, seed, group_by, min_per_class
        The task's saved split, as for ``classify``.
    sheet : int, default=8
        Queries shown on the contact sheet.
    weights_file : path, optional
        The trunk's weights, when ``queries`` are given and the cache lost their path.
    device, progress, warn
        Where ``queries`` run through the trunk; a progress bar; a callable for notes.

    Returns
    -------
    dict
        ``precision_at_k``, ``map_at_k``, ``chance_precision_at_k``,
        ``per_class``, the settings, and the paths of the contact sheet and
        HTML page; with ``queries``, each query's neighbours.
    """
    config = RetrieveConfig(
        backbone=backbone, task=task, weights=weights, k=k, queries=[str(q) for q in queries],
        weights_file=None if weights_file is None else str(weights_file), sheet=sheet,
        split=SplitSpec.of(split, seed=seed, group_by=group_by, min_per_class=min_per_class),
        device=device, cache_root=str(cache), progress=progress)
    found = cached_collection(cache=cache, collection=collection)
    from featbank.analysis.retrieve import lookup
    from featbank.analysis.retrieve import retrieve as evaluate_retrieval

    return (lookup if config.queries else evaluate_retrieval)(found, config, warn=warn)


def duplicates(backbone: str, *, collection: str | None = None, weights: str = "all",
               threshold: float | None = None, k: int = 10, across: str | None = None,
               rotations: bool = True, verify: str = "auto", min_inliers: int | None = None,
               sheet: int = 8, cache: PathLike = "cache", weights_file: PathLike | None = None,
               device: str = "cpu", progress: bool = True, warn=quiet) -> dict:
    """Near-duplicate images: groups within a collection, or pairs with another one.

    Parameters
    ----------
    backbone : str
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    weights : str, default="all"
    threshold : float, optional
        Cosine similarity at which two images count as duplicates (default:
        ``featbank.analysis.config.DUPLICATE_THRESHOLD``, chosen on
        ``bench/bench_duplicates.py``).
    k : int, default=10
        Neighbours each image is compared with.
    across : str, optional
        Another collection of the cache: which of this collection's images it
        already holds (its features made by the same backbone and weights).
    rotations : bool, default=True
        Also query every image turned by 90, 180 and 270 degrees (three more
        passes of the trunk, kept in the cache), to find copies stored rotated.
    verify : {"auto", "on", "off"}, default="auto"
        Confirm each candidate pair by geometric verification of local
        features (OpenCV; ``auto``: when it is installed).
    min_inliers : int, optional
        RANSAC inliers a confirmed pair has (default:
        ``featbank.analysis.geometry.MIN_INLIERS``).
    sheet : int, default=8
        Groups shown on the contact sheet.
    cache : path, default="cache"
    weights_file, device
        The trunk's weights when the cache lost their path, and where turned images run.
    progress, warn
        A progress bar; a callable for notes.

    Returns
    -------
    dict
        ``n_groups``, ``largest``, ``n_candidates``, ``n_pairs`` (confirmed),
        ``n_rotated``, and the paths of the groups' CSV, the pairs' CSV, the
        contact sheet and the HTML page; with ``across``, ``n_duplicated``,
        ``n_pairs`` and the CSV.
    """
    from featbank.analysis.duplicates import duplicates as find
    from featbank.analysis.geometry import MIN_INLIERS

    config = DuplicatesConfig(
        backbone=backbone, weights=weights, k=k, across=across, sheet=sheet,
        threshold=DUPLICATE_THRESHOLD if threshold is None else threshold,
        rotations=rotations, verify=verify,
        min_inliers=MIN_INLIERS if min_inliers is None else min_inliers,
        weights_file=None if weights_file is None else str(weights_file), device=device,
        cache_root=str(cache), progress=progress)
    return find(cached_collection(cache=cache, collection=collection), config, warn=warn)


def cka_files(features: Sequence[PathLike], *, debiased: bool = False,
              cache: PathLike = "cache", warn=quiet) -> dict:
    """Linear CKA (Kornblith et al. 2019) between every pair of feature files, with a
    heatmap (``analyze.py cka``; on arrays: :func:`featbank.api.arrays.cka`).

    Parameters
    ----------
    features : sequence of paths
        Feature files (at least two), compared on the image ids they share.
    debiased : bool, default=False
        The unbiased HSIC estimator, for few images per dimension.
    cache : path, default="cache"
    warn : callable, optional

    Returns
    -------
    dict
        ``names``, the ``cka`` matrix, the settings and the heatmap's path.
    """
    from featbank.analysis.cka import cka as compare

    return compare(CkaConfig(features=[str(f) for f in features], debiased=debiased,
                             cache_root=str(cache), progress=False), warn=warn)


def layer_curve(collection: str | None = None, *, head: str = "all", task: str = "all",
                cache: PathLike = "cache", split: SplitLike = (0.8, 0.1, 0.1),
                seed: int = 0, group_by: str | None = None, min_per_class: int | None = None,
                normalize: str = "standard", pca: int | None = None, balanced: bool = False,
                softmax_recipe: str = "fast", train_fraction: float = 1.0,
                calibrate: str | None = None, repeats: int = 1, warn=quiet) -> list[dict]:
    """Test score ± interval against depth, from the cells ``classify(layers="all")``
    stored: a plot and its points per task, a line per backbone, weights and head.

    Parameters
    ----------
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    head, task : str
        Which heads and tasks to draw, comma-separated or ``all``.
    cache : path, default="cache"
    split, seed, group_by, min_per_class, repeats
        The split of the cells that count, as for :func:`featbank.api.grid.results_table`.
    normalize, pca, balanced, softmax_recipe, train_fraction, calibrate
        The settings of the cells that count.

    Returns
    -------
    list of dict
        Per task: its ``lines`` (points: layer ``name``, ``x``, ``score``,
        ``spread``), the ``plot`` (PNG) and ``json`` paths.
    """
    from featbank.analysis.layer_curve import layer_curve as draw
    from featbank.api.grid import table

    chosen = table(collection, cache=cache, split=split, seed=seed, group_by=group_by,
                   min_per_class=min_per_class, normalize=normalize, pca=pca,
                   balanced=balanced, softmax_recipe=softmax_recipe,
                   train_fraction=train_fraction, calibrate=calibrate, repeats=repeats,
                   warn=warn)
    return draw(chosen, cache, heads=head, tasks=task)


def shot_curve(collection: str | None = None, *, head: str = "all", task: str = "all",
               cache: PathLike = "cache", split: SplitLike = (0.8, 0.1, 0.1),
               seed: int = 0, group_by: str | None = None, min_per_class: int | None = None,
               normalize: str = "standard", pca: int | None = None, balanced: bool = False,
               softmax_recipe: str = "fast", train_fraction: float = 1.0,
               calibrate: str | None = None, repeats: int = 1, warn=quiet) -> list[dict]:
    """Test score ± standard deviation against k, the training images per class, from
    the cells ``classify(shots=...)`` stored: a plot and its points per task, a line per
    backbone, weights and head (k on a log axis).

    Parameters
    ----------
    collection : str, optional
        Images folder whose cells are drawn (default: the demo collection).
    head, task : str
        One head or task, or ``"all"``.
    split, seed, group_by, min_per_class, repeats
        The split of the cells that count, as for :func:`featbank.api.grid.results_table`.
    normalize, pca, balanced, softmax_recipe, train_fraction, calibrate
        The settings of the cells that count.
    warn : callable
        Called with a line for every stale or unreadable cell left out.

    Returns
    -------
    list of dict
        Per task: its ``lines`` (points: ``shots``, ``score``, ``spread``, ``draws``),
        the ``plot`` (PNG) and ``json`` paths.
    """
    from featbank.analysis.shot_curve import shot_curve as draw
    from featbank.api.grid import table

    chosen = table(collection, cache=cache, split=split, seed=seed, group_by=group_by,
                   min_per_class=min_per_class, normalize=normalize, pca=pca,
                   balanced=balanced, softmax_recipe=softmax_recipe,
                   train_fraction=train_fraction, calibrate=calibrate, repeats=repeats,
                   warn=warn)
    return draw(chosen, cache, heads=head, tasks=task)


def map2d(backbone: str, task: str, *, collection: str | None = None, weights: str = "all",
          method: str = "auto", max_points: int = 5000, seed: int = 0,
          cache: PathLike = "cache", progress: bool = True, warn=quiet) -> dict:
    """A 2-D map (UMAP or t-SNE) of a feature file, coloured by a task.

    Parameters
    ----------
    backbone, task : str
    collection : str, optional
    weights : str, default="all"
    method : {"auto", "umap", "tsne"}, default="auto"
        ``auto``: UMAP when ``umap-learn`` is installed, else t-SNE.
    max_points : int, default=5000
        A seeded, class-stratified sample beyond this many images.
    seed : int, default=0
    cache : path, default="cache"
    progress, warn
        A progress bar; a callable for notes.

    Returns
    -------
    dict
        ``silhouette_2d`` of the task's classes on the map, and the paths of
        the PNG, the points' CSV and the HTML page.
    """
    from featbank.analysis.maps import make_map

    config = MapConfig(backbone=backbone, task=task, weights=weights, method=method,
                       max_points=max_points, seed=seed, cache_root=str(cache),
                       progress=progress)
    return make_map(cached_collection(cache=cache, collection=collection), config, warn=warn)


def export(backbone: str, *, collection: str | None = None, weights: str = "all",
           format: str = "npy", cache: PathLike = "cache", warn=quiet) -> dict:
    """Write a feature file's vectors with ids and labels for other tools.

    Parameters
    ----------
    backbone : str
    collection : str, optional
    weights : str, default="all"
    format : {"npy", "parquet"}, default="npy"
    cache : path, default="cache"
    warn : callable, optional

    Returns
    -------
    dict
        ``files`` written, ``n_rows``, ``feature_dim`` and the file's provenance.
    """
    from featbank.analysis.export import export as write

    config = ExportConfig(backbone=backbone, weights=weights, format=format,
                          cache_root=str(cache))
    return write(cached_collection(cache=cache, collection=collection), config, warn=warn)
