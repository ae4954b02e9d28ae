"""The analyses as functions: retrieval, CKA, 2-D maps, export; layers, the layer curve, top
images, saliency.

Each builds the sub-command's checked configuration from keywords, runs it
on a collection of the cache and returns its report: the dict that
``analyze.py`` writes as JSON (figures, settings, and the paths of the
pictures it drew under ``<cache>/<collection>/analysis/<sub-command>/``).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from featbank.analysis.config import (
    CkaConfig,
    DuplicatesConfig,
    ExportConfig,
    LayersConfig,
    MapConfig,
    RetrieveConfig,
    SaliencyConfig,
    TopImagesConfig,
)
from featbank.data.sources import cached_collection
from featbank.data.tasks import SplitSpec

PathLike = str | os.PathLike


def _quiet(message: str) -> None:
    """Where the analyses' notes go when the caller passes no ``warn``."""


def _split(settings: dict, *, keep_seed: bool = False) -> dict:
    """``split`` (``"80/10/10"``), ``seed``, ``group_by`` and ``min_per_class`` keywords as
    the config's SplitSpec, for the analyses that read a task's saved split; ``seed``
    stays a keyword of the config too where it has one (``keep_seed``)."""
    seed = settings.get("seed", 0) if keep_seed else settings.pop("seed", 0)
    spec = SplitSpec.parse(settings.pop("split", "80/10/10"), seed=seed,
                           group_by=settings.pop("group_by", None),
                           min_per_class=settings.pop("min_per_class", None))
    return {**settings, "split": spec}


def retrieve(backbone: str, task: str | None = None, *, collection: str | None = None,
             weights: str = "all", k: int = 10, queries: Sequence[PathLike] = (),
             cache: PathLike = "cache", warn=_quiet, **settings: Any) -> dict:
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
    warn : callable, optional
    **settings
        ``split``, ``seed``, ``sheet`` (queries on the contact sheet),
        ``device``, ``weights_file``, ``progress``.

    Returns
    -------
    dict
        ``precision_at_k``, ``map_at_k``, ``chance_precision_at_k``,
        ``per_class``, the settings, and the paths of the contact sheet and
        HTML page; with ``queries``, each query's neighbours.
    """
    config = RetrieveConfig(backbone=backbone, task=task, weights=weights, k=k,
                            queries=[str(q) for q in queries], cache_root=str(cache),
                            **_split(settings))
    found = cached_collection(cache=cache, collection=collection)
    from featbank.analysis.retrieve import lookup
    from featbank.analysis.retrieve import retrieve as evaluate_retrieval

    return (lookup if config.queries else evaluate_retrieval)(found, config, warn=warn)


def duplicates(backbone: str, *, collection: str | None = None, weights: str = "all",
               threshold: float | None = None, k: int = 10, across: str | None = None,
               cache: PathLike = "cache", warn=_quiet, **settings: Any) -> dict:
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
    cache : path, default="cache"
    warn : callable, optional
    **settings
        ``sheet`` (groups on the contact sheet), ``progress``.

    Returns
    -------
    dict
        ``n_groups``, ``largest``, and the paths of the CSV, contact sheet and
        HTML page; with ``across``, ``n_duplicated``, ``n_pairs`` and the CSV.
    """
    from featbank.analysis.duplicates import duplicates as find

    if threshold is not None:
        settings["threshold"] = threshold
    config = DuplicatesConfig(backbone=backbone, weights=weights, k=k, across=across,
                              cache_root=str(cache), **settings)
    return find(cached_collection(cache=cache, collection=collection), config, warn=warn)


def cka_files(features: Sequence[PathLike], *, debiased: bool = False,
              cache: PathLike = "cache", warn=_quiet) -> dict:
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
                cache: PathLike = "cache", split: str = "80/10/10", seed: int = 0,
                warn=_quiet, **settings: Any) -> list[dict]:
    """Test score ± interval against depth, from the cells ``classify(layers="all")``
    stored: a plot and its points per task, a line per backbone, weights and head.

    Parameters
    ----------
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    head, task : str
        Which heads and tasks to draw, comma-separated or ``all``.
    cache : path, default="cache"
    split, seed, **settings
        Which cells count, as for :func:`featbank.api.stages.results_table`.

    Returns
    -------
    list of dict
        Per task: its ``lines`` (points: layer ``name``, ``x``, ``score``,
        ``spread``), the ``plot`` (PNG) and ``json`` paths.
    """
    from featbank.analysis.layer_curve import layer_curve as draw
    from featbank.api.stages import table

    return draw(table(collection, cache=cache, split=split, seed=seed, warn=warn, **settings),
                cache, heads=head, tasks=task)


def shot_curve(collection: str | None = None, *, head: str = "all", task: str = "all",
               cache: PathLike = "cache", split: str = "80/10/10", seed: int = 0,
               warn=_quiet, **settings: Any) -> list[dict]:
    """Test score ± standard deviation against k, the training images per class, from
    the cells ``classify(shots=...)`` stored: a plot and its points per task, a line per
    backbone, weights and head (k on a log axis).

    Parameters
    ----------
    collection : str, optional
        Images folder whose cells are drawn (default: the demo collection).
    head, task : str
        One head or task, or ``"all"``.
    cache, split, seed
        As for ``classify``: the cells of that split and seed.
    warn : callable
        Called with a line for every stale or unreadable cell left out.

    Returns
    -------
    list of dict
        Per task: its ``lines`` (points: ``shots``, ``score``, ``spread``, ``draws``),
        the ``plot`` (PNG) and ``json`` paths.
    """
    from featbank.analysis.shot_curve import shot_curve as draw
    from featbank.api.stages import table

    return draw(table(collection, cache=cache, split=split, seed=seed, warn=warn, **settings),
                cache, heads=head, tasks=task)


def map2d(backbone: str, task: str, *, collection: str | None = None, weights: str = "all",
          method: str = "auto", cache: PathLike = "cache", warn=_quiet,
          **settings: Any) -> dict:
    """A 2-D map (UMAP or t-SNE) of a feature file, coloured by a task.

    Parameters
    ----------
    backbone, task : str
    collection : str, optional
    weights : str, default="all"
    method : {"auto", "umap", "tsne"}, default="auto"
        ``auto``: UMAP when ``umap-learn`` is installed, else t-SNE.
    cache : path, default="cache"
    warn : callable, optional
    **settings
        ``max_points``, ``seed``, ``progress``.

    Returns
    -------
    dict
        ``silhouette_2d`` of the task's classes on the map, and the paths of
        the PNG, the points' CSV and the HTML page.
    """
    from featbank.analysis.maps import make_map

    config = MapConfig(backbone=backbone, task=task, weights=weights, method=method,
                       cache_root=str(cache), **settings)
    return make_map(cached_collection(cache=cache, collection=collection), config, warn=warn)


def export(backbone: str, *, collection: str | None = None, weights: str = "all",
           format: str = "npy", cache: PathLike = "cache", warn=_quiet) -> dict:
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


def layers(backbone: str, weights: str, compare: str, *, collection: str | None = None,
           cache: PathLike = "cache", warn=_quiet, **settings: Any) -> dict:
    """Per stage, how far two trunks of one architecture are apart (Gonthier et al.).

    Parameters
    ----------
    backbone : str
    weights, compare : str
        The two trunks: ``imagenet``, ``random``, a weights file or a
        fine-tuning run folder.
    collection : str, optional
    cache : path, default="cache"
    warn : callable, optional
    **settings
        ``n`` (images for CKA, a seeded sample), ``seed``, ``batch_size``,
        ``workers``, ``device``, ``progress``.

    Returns
    -------
    dict
        ``stages``: each stage's ``weight_distance`` and ``cka``; the plot's path.
    """
    from featbank.analysis.layers import layers as compare_stages

    config = LayersConfig(backbone=backbone, weights=str(weights), compare=str(compare),
                          cache_root=str(cache), **settings)
    return compare_stages(cached_collection(cache=cache, collection=collection), config,
                          warn=warn)


def top_images(backbone: str, weights: str, *, compare: str | None = None,
               collection: str | None = None, cache: PathLike = "cache", warn=_quiet,
               **settings: Any) -> dict:
    """Each channel's most activating collection images, their class entropy and, with
    ``compare``, how much two trunks agree on them.

    Parameters
    ----------
    backbone, weights : str
    compare : str, optional
        A second trunk of the same architecture.
    collection : str, optional
    cache : path, default="cache"
    warn : callable, optional
    **settings
        ``stage``, ``k``, ``task``, ``n``, ``seed``, ``batch_size``, ``workers``,
        ``device``, ``progress``.

    Returns
    -------
    dict
        ``entropy``, ``label_entropy``, ``overlap`` (with ``compare``), the plot's path.
    """
    from featbank.analysis.top_images import top_images as rank

    config = TopImagesConfig(backbone=backbone, weights=str(weights),
                             compare=None if compare is None else str(compare),
                             cache_root=str(cache), **settings)
    return rank(cached_collection(cache=cache, collection=collection), config, warn=warn)


def saliency(*, run: PathLike | None = None, backbone: str | None = None,
             weights: str = "imagenet", task: str | None = None, head: str | None = None,
             method: str = "gradcam", collection: str | None = None,
             cache: PathLike = "cache", warn=_quiet, **settings: Any) -> dict:
    """Saliency maps of a fine-tuned run, or of a trunk with a stored linear head.

    Parameters
    ----------
    run : path, optional
        A fine-tuning run folder (its trunk and head).
    backbone, weights, task, head : str, optional
        Or: a trunk, with the head ``classify`` stored for ``task``.
    method : {"gradcam", "vbp", "ig"}, default="gradcam"
    collection : str, optional
    cache : path, default="cache"
    warn : callable, optional
    **settings
        ``n``, ``images``, ``sanity``, ``steps``, ``seed``, ``split``,
        ``device``, ``progress``.

    Returns
    -------
    dict
        Per image its class and prediction, the grid's path, and with
        ``sanity`` the rank correlation with a re-initialised model.
    """
    from featbank.analysis.saliency import saliency as draw

    config = SaliencyConfig(method=method, run=None if run is None else str(run),
                            backbone=backbone, weights=str(weights), task=task, head=head,
                            cache_root=str(cache), **_split(settings, keep_seed=True))
    return draw(cached_collection(cache=cache, collection=collection), config, warn=warn)
