"""The stages as functions: extract, classify, fine-tune; features, heads and tables in memory.

Each function takes plain values (paths, names, arrays), builds the stage's
checked configuration and runs it, exactly as the command lines do (they call
these functions). Importing this module costs no torch: the stages that need
it import it when they run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from featbank.classification.config import ClassifyConfig
from featbank.core.errors import BadInput
from featbank.data.sources import cached_collection, open_collection
from featbank.data.tasks import SplitSpec
from featbank.extraction.config import ExtractConfig
from featbank.finetuning.config import FinetuneConfig
from featbank.heads.registry import HEADS, HeadOptions, make_head
from featbank.heads.registry import fit_head as _fit
from featbank.models.registry import check_names
from featbank.store.features import Features, one_feature_file
from featbank.store.results import latest_rows, load_results

if TYPE_CHECKING:  # for the signatures only: these import torch or pandas
    import pandas
    from sklearn.pipeline import Pipeline

    from featbank.evaluation.tables import Table
    from featbank.extraction.engine import ExtractReport
    from featbank.finetuning.train import FinetuneResult

PathLike = str | os.PathLike


def _quiet(message: str) -> None:
    """Where the stages' notes go when the caller passes no ``warn``."""


def extract(images: PathLike | None = None, *, backbone, weights: str = "imagenet",
            preprocess=None, manifest: PathLike | None = None, collection: str | None = None,
            cache: PathLike = "cache", root: PathLike | None = None,
            image_column: str | None = None, label_columns: str | None = None,
            attributes: PathLike | None = None, multi_label: str | None = None,
            separator: str = ";", layers: str = "final", pool: str = "auto",
            batch_size: int | None = None, workers: int | None = None, device: str = "auto",
            dtype: str = "float32", precision: str = "auto", compile: bool = False,
            decode: str = "auto", jpeg_decoder: str = "auto", engine: str = "local",
            ray_address: str | None = None, ray_actors: int | None = None,
            force_new: bool = False, verify_images: bool = False, prune: bool = False,
            progress: bool = True) -> list[ExtractReport]:
    """Cache the global-average-pooled features of a collection's images.

    Runs each backbone once over the images still missing from its feature
    file (a re-run is a no-op; a killed run resumes; a changed image is
    extracted again) and writes ``<cache>/<collection>/features/<backbone>__<weights>.h5``.

    Parameters
    ----------
    images : path, optional
        A folder with one sub-folder per class (the task ``label``). With
        neither ``images`` nor ``manifest``: the collection named
        ``collection`` in the cache, else the built-in demo.
    backbone : str, sequence of str, or torch.nn.Module
        Registry names (``"squeezenet1_1"``, ``"vgg19,resnet50"``, ``"all"``,
        ``"timm:<model>"``); or your own network: any module that maps a (B, 3, S, S)
        image batch to feature maps (average-pooled) or vectors, identified by its
        class name and the digest of its state_dict (``weights`` is then ignored).
    weights : str, default="imagenet"
        ``imagenet`` (the exact published weights the registry pins),
        ``random`` (the library's initialisation, seeded) or the path of a
        weights file (recorded by its sha256).
    preprocess : Preprocess or dict, optional
        With a module: how an image becomes its input (``input_size``, ``mean``,
        ``std``, ``resize``, ``crop_pct``, ``interpolation``; default: ImageNet's at 224).
    manifest : path, optional
        A CSV with an image column and label columns, a Dublin Core XML file
        or folder, or iMet's ``train.csv`` with ``attributes``.
    collection : str, optional
        The collection's name in the cache (default: the folder's or
        manifest's name).
    cache : path, default="cache"
    root, image_column, label_columns, attributes, multi_label, separator
        How to read a manifest (see the command line's ``--help``).
    layers, pool, batch_size, workers, device, dtype, precision, compile, decode,
    jpeg_decoder, engine, ray_address, ray_actors, force_new, verify_images, prune
        As ``extract.py``'s options of the same names
        (:class:`featbank.extraction.config.ExtractConfig`).
    progress : bool, default=True
        Show a progress bar.

    Returns
    -------
    list of ExtractReport
        One per feature file: its path, rows, new rows, undecodable images, seconds.
    """
    if not isinstance(backbone, (str, list, tuple)):  # a user's network (models.custom)
        from featbank.models.custom import register_module

        backbone, _ = register_module(backbone, preprocess)
        weights = "module"  # resolved to the state_dict's digest (models.trunks)
        if engine != "local":
            raise BadInput("a network passed as a module runs in this process only; use "
                           "engine='local'")
    elif preprocess is not None:
        raise BadInput("preprocess is for a network passed as a module; a registry "
                       "backbone brings its own")
    config = ExtractConfig(
        backbones=backbone if isinstance(backbone, str) else list(backbone),
        weights=str(weights), cache_root=str(cache), progress=progress, layers=layers,
        pool=pool, batch_size=batch_size, workers=workers, device=device, dtype=dtype,
        precision=precision, compile=compile, decode=decode, jpeg_decoder=jpeg_decoder,
        engine=engine, ray_address=ray_address, ray_actors=ray_actors, force_new=force_new,
        verify_images=verify_images, prune=prune)
    found = open_collection(cache=cache, collection=collection, images=images,
                            manifest=manifest, root=root, image_column=image_column,
                            label_columns=label_columns, attributes=attributes,
                            multi_label=multi_label, separator=separator)
    from featbank.extraction.engine import extract as run_extraction

    return run_extraction(found, config)


def load_features(backbone: str, *, collection: str | None = None, weights: str = "all",
                  cache: PathLike = "cache") -> Features:
    """Read one feature file into memory, with the collection's labels.

    Parameters
    ----------
    backbone : str
        The registry name the features were extracted with.
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    weights : str, default="all"
        ``imagenet``, ``random`` or a sha256 prefix, when the backbone has
        several feature files (``all``: the only one there is).
    cache : path, default="cache"
        The cache root.

    Returns
    -------
    Features
        ``ids`` (n,), ``X`` (n, d) float32, ``labels`` (task -> n labels, None
        where unlabelled), ``provenance`` (the file's attributes: exact
        weights, preprocessing, versions) and ``skipped`` (undecodable images).
    """
    check_names([backbone])
    found = cached_collection(cache=cache, collection=collection)
    entry = one_feature_file(Path(cache) / found.name, backbone, weights)
    data = entry.read()
    data.X = data.X.astype(np.float32, copy=False)
    by_id = found.labels_by_id()
    data.labels = {task: [by_id[task].get(i) for i in data.ids] for task in found.tasks}
    return data


def fit_head(head: str, X: np.ndarray, y: np.ndarray, *, X_val: np.ndarray | None = None,
             y_val: np.ndarray | None = None, normalize: str = "standard",
             pca: int | None = None, balanced: bool = False, seed: int = 0,
             softmax_recipe: str = "fast") -> Pipeline:
    """Train one registry head on features in memory, tuning it as ``classify`` does.

    Parameters
    ----------
    head : str
        A registry name: ``softmax``, ``svm``, ``rf``, ``logreg`` or ``knn``.
    X : array of shape (n_samples, n_features)
        Training features.
    y : array of shape (n_samples,) or (n_samples, n_classes)
        Labels, or a 0/1 matrix for a multi-label task (one head per label).
    X_val, y_val : arrays, optional
        Validation data: the head's hyper-parameter is chosen on it (without
        it, by 3-fold cross-validation on the training data).
    normalize : {"standard", "l2", "none"}, default="standard"
    pca : int, optional
        Project to this many dimensions first.
    balanced : bool, default=False
        Weigh classes inversely to their size.
    seed : int, default=0
    softmax_recipe : {"fast", "paper"}, default="fast"

    Returns
    -------
    sklearn.pipeline.Pipeline
        The fitted pipeline (normalise, PCA, head): ``predict``,
        ``predict_proba`` where the head has them, ``score``; the chosen
        hyper-parameter is in ``pipeline[-1].get_params()``.
    """
    options = HeadOptions(normalize=normalize, pca=pca, balanced=balanced, seed=seed,
                          softmax_recipe=softmax_recipe)
    pipeline = make_head(head, options, multi_label=np.ndim(y) == 2)
    _fit(pipeline, np.asarray(X), np.asarray(y), X_val, y_val,
         grid=HEADS[head].grid_for(options))
    return pipeline


def classify_config(*, cache: PathLike = "cache", head: str = "all", backbone: str = "all",
                    task: str = "all", weights: str = "all", split: str = "80/10/10",
                    seed: int = 0, **settings: Any) -> ClassifyConfig:
    """The checked configuration :func:`classify`'s keywords make (same keywords)."""
    options = {k: settings.pop(k) for k in ("normalize", "pca", "balanced", "softmax_recipe")
               if k in settings}
    group_by, min_per_class = settings.pop("group_by", None), settings.pop("min_per_class", None)
    return ClassifyConfig(heads=head, backbones=backbone, tasks=task, weights=weights,
                          cache_root=str(cache),
                          split=SplitSpec.parse(split, seed=seed, group_by=group_by,
                                                min_per_class=min_per_class),
                          options=HeadOptions(seed=seed, **options), **settings)


def classify(*, collection: str | None = None, head: str = "all", backbone: str = "all",
             task: str = "all", weights: str = "all", cache: PathLike = "cache",
             split: str = "80/10/10", seed: int = 0, warn=_quiet, **settings: Any) -> list[dict]:
    """Fill the off-the-shelf grid: every head x feature file x task, on saved splits.

    Cells already in the results store are reused; each new cell's row is
    appended to ``<cache>/<collection>/results.jsonl`` as it finishes.

    Parameters
    ----------
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    head, backbone, task, weights : str
        What to train, comma-separated or ``all``; ``backbone`` takes
        ``A@W+B@W`` for concatenated feature files.
    cache : path, default="cache"
    split : str, default="80/10/10"
        Train/val/test percentages of each class.
    seed : int, default=0
        Seed of the split and of the heads.
    warn : callable, optional
        Receives one line per cell and note (default: silent).
    **settings
        ``normalize``, ``pca``, ``balanced``, ``softmax_recipe`` (the heads'
        options), ``group_by``, ``min_per_class`` (the split's) and any other
        field of :class:`featbank.classification.config.ClassifyConfig`
        (``train_fraction``, ``jobs``, ``force``, ``ensemble``, ``repeats``).

    Returns
    -------
    list of dict
        The results rows this call computed (reused cells are not repeated).
    """
    config = classify_config(cache=cache, head=head, backbone=backbone, task=task,
                             weights=weights, split=split, seed=seed, **settings)
    found = cached_collection(cache=cache, collection=collection)
    from featbank.classification.grid import classify as run_grid

    return run_grid(found, config, warn=warn)


def table(collection: str | None = None, *, cache: PathLike = "cache",
          split: str = "80/10/10", seed: int = 0, warn=_quiet, **settings: Any) -> Table:
    """The paper-style table of a collection's results store (see :func:`results_table`),
    as the command line prints it: Markdown with ± and bold marks, notes, files.
    Only results that still describe the cache count
    (:func:`featbank.evaluation.currency.current_rows`); ``warn`` hears how many others
    were left out and why, and a line per damaged line of the store (skipped)."""
    from featbank.evaluation.currency import current_rows
    from featbank.evaluation.tables import Table, build_table

    config = classify_config(cache=cache, split=split, seed=seed, **settings)
    found = cached_collection(cache=cache, collection=collection)
    folder = Path(cache) / found.name
    repeats = config.repeated()
    rows = current_rows(latest_rows(load_results(folder, warn=warn)), folder, warn=warn)
    columns, records = build_table(rows, folder=folder,
                                   split_tag=[c.split.tag for c in repeats],
                                   variant=[c.variant for c in repeats], head_order=list(HEADS))
    return Table(columns, records, found.name)


def results_table(collection: str | None = None, *, cache: PathLike = "cache",
                  split: str = "80/10/10", seed: int = 0, **settings: Any) -> pandas.DataFrame:
    """The paper-style table of a collection's results store, as a DataFrame.

    Rows are task x backbone x weights, columns the heads (with their
    non-default settings), ensembles and fine-tuning; a cell is the test
    top-1 (mAP for a multi-label task), or the mean over ``repeats``.

    Parameters
    ----------
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    cache : path, default="cache"
    split : str, default="80/10/10"
    seed : int, default=0
        The split the cells were trained on (with ``repeats``: the first seed).
    **settings
        The settings that select which cells count, as for :func:`classify`
        (``normalize``, ``pca``, ``train_fraction``, ``repeats``, ...).

    Returns
    -------
    pandas.DataFrame
        Indexed by (task, backbone, weights, dim); ``df.attrs["spread"]`` holds
        each cell's ± (half the 95 % interval, or the standard deviation over
        repeats) and ``df.attrs["bold"]`` the cells not significantly worse
        than their row's best, both keyed by (row index, column).
    """
    return table(collection, cache=cache, split=split, seed=seed, **settings).frame()


def finetune(backbone: str, task: str, *, collection: str | None = None,
             init: str = "imagenet", cache: PathLike = "cache", progress: bool = True,
             log=_quiet, split: str = "80/10/10", seed: int = 0,
             **settings: Any) -> FinetuneResult | list[FinetuneResult]:
    """Fine-tune a backbone with a new head on a task's saved split (the one
    :func:`classify` uses), test its best-validation-loss weights, export its trunk.

    Parameters
    ----------
    backbone : str
        A registry name.
    task : str
        The label column to learn.
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    init : str, default="imagenet"
        ``imagenet``, ``random`` (He-uniform, seeded with ``seed``) or the
        path of a trunk state_dict, exported trunk or featbank checkpoint.
    cache : path, default="cache"
    progress : bool, default=True
    log : callable, optional
        Receives one line per epoch (default: silent).
    split : str, default="80/10/10"
    seed : int, default=0
        Seed of the split and of the training.
    **settings
        Any other field of :class:`featbank.finetuning.config.FinetuneConfig`
        (``freeze``, ``epochs``, ``patience``, ``optimizer``, ``lr``,
        ``batch_size``, ``image_size``, ``augment``, ``device``, ...), and the
        split's ``group_by`` and ``min_per_class``.

    Returns
    -------
    FinetuneResult, or a list of them with ``repeats`` > 1
        ``folder`` (the run folder, with ``trunk.pth`` for :func:`extract`),
        ``row`` (the results row), ``history`` (per epoch).
    """
    group_by, min_per_class = settings.pop("group_by", None), settings.pop("min_per_class", None)
    config = FinetuneConfig(backbone=backbone, task=task, init=init, cache_root=str(cache),
                            progress=progress, seed=seed,
                            split=SplitSpec.parse(split, seed=seed, group_by=group_by,
                                                  min_per_class=min_per_class), **settings)
    found = cached_collection(cache=cache, collection=collection)
    from featbank.finetuning.train import finetune as run_training

    results = []
    for repeat in config.repeated():
        if config.repeats > 1:
            log(f"repeat with seed {repeat.seed} (split {repeat.split.tag})")
        results.append(run_training(found, repeat, log=log))
    return results[0] if len(results) == 1 else results
