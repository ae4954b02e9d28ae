"""The stages as functions: extract, fine-tune; features and heads in memory (the
off-the-shelf grid and its tables: :mod:`featbank.api.grid`).

Each function takes plain values (paths, names, arrays), builds the stage's
checked configuration and runs it, exactly as the command lines do (they call
these functions). Importing this module costs no torch: the stages that need
it import it when they run.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from featbank.api.common import PathLike, quiet
from featbank.core.errors import BadInput
from featbank.api.groups import with_duplicate_groups
from featbank.data.sources import cached_collection, open_collection
from featbank.data.tasks import SplitSpec
from featbank.extraction.config import ExtractConfig
from featbank.finetuning.config import FinetuneConfig
from featbank.heads.registry import HEADS, HeadOptions, make_head
from featbank.heads.registry import fit_head as _fit
from featbank.models.registry import check_names
from featbank.store.features import Features, one_feature_file

if TYPE_CHECKING:  # for the signatures only: these import torch or scikit-learn
    from sklearn.pipeline import Pipeline

    from featbank.extraction.engine import ExtractReport
    from featbank.finetuning.train import FinetuneResult


def extract(images: PathLike | None = None, *, backbone, weights: str = "imagenet",
            preprocess=None, manifest: PathLike | None = None, collection: str | None = None,
            cache: PathLike = "cache", root: PathLike | None = None, image_column: str | None = None,
            label_columns: str | None = None, attributes: PathLike | None = None,
            multi_label: str | None = None, separator: str = ";", layers: str = "final",
            pool: str = "auto", batch_size: int | None = None, workers: int | None = None,
            device: str = "auto", dtype: str = "float32", precision: str = "auto",
            compile: bool = False, decode: str = "auto", jpeg_decoder: str = "auto",
            engine: str = "local", ray_address: str | None = None, ray_actors: int | None = None,
            force_new: bool = False, verify_images: bool = False, prune: bool = False,
            iiif: str | None = None, iiif_size: int | None = None, offline: bool = False,
            iiif_politeness=None, progress: bool = True) -> list[ExtractReport]:
    """Cache the global-average-pooled features of a collection's images: each backbone runs
    over the images its file lacks (a re-run is a no-op, a killed run resumes).

    Parameters
    ----------
    images : path, optional
        A folder of class folders (task ``label``). With no source: the collection
        ``collection`` in the cache, else the built-in demo.
    backbone : str, sequence of str, or torch.nn.Module
        Registry names (``"squeezenet1_1"``, ``"vgg19,resnet50"``, ``"all"``, ``"timm:<m>"``),
        or a module mapping a (B, 3, S, S) batch to feature maps or vectors, known by its
        class name and its state_dict's digest (``weights`` is then ignored).
    weights : str, default="imagenet"
        ``imagenet`` (pinned by the registry), ``random`` (seeded) or a weights file.
    preprocess : Preprocess or dict, optional
        With a module: how an image becomes its input (default: ImageNet's at 224).
    manifest : path, optional
        A CSV with image and label columns, Dublin Core XML, or iMet's ``train.csv``.
    collection : str, optional
        Its name in the cache (default: the folder's or manifest's name).
    iiif : str, optional
        A IIIF manifest or collection (URL or file): one image per canvas (docs/iiif.md).
    cache, root, image_column, label_columns, attributes, multi_label, separator, layers,
    pool, batch_size, workers, device, dtype, precision, compile, decode, jpeg_decoder,
    engine, ray_address, ray_actors, force_new, verify_images, prune, iiif_size, offline,
    iiif_politeness (a :class:`featbank.data.fetch.Politeness`), progress
        As ``extract.py``'s options (:class:`featbank.extraction.config.ExtractConfig`).

    Returns
    -------
    list of ExtractReport
        One per feature file: its path, rows, new rows, undecodable images, seconds.
    """
    backbone, weights = _backbone_and_weights(backbone, weights, preprocess, engine)
    config = ExtractConfig(
        backbones=backbone, weights=str(weights), cache_root=str(cache), progress=progress,
        layers=layers, pool=pool, batch_size=batch_size, workers=workers, device=device,
        dtype=dtype, precision=precision, compile=compile, decode=decode,
        jpeg_decoder=jpeg_decoder, engine=engine, ray_address=ray_address,
        ray_actors=ray_actors, force_new=force_new, verify_images=verify_images, prune=prune)
    found = open_collection(
        cache=cache, collection=collection, images=images, manifest=manifest, root=root,
        image_column=image_column, label_columns=label_columns, attributes=attributes,
        multi_label=multi_label, separator=separator, iiif=iiif, offline=offline,
        iiif_size=iiif_size or (_largest_input(config.backbones) if iiif else 0),
        politeness=iiif_politeness)
    return _run_extraction(found, config)


def _run_extraction(found, config) -> list[ExtractReport]:
    from featbank.extraction.engine import extract as run_extraction  # torch: only now

    return run_extraction(found, config)


def _largest_input(backbones: list[str]) -> int:
    """The shorter side an image needs for every backbone of a run (its largest input;
    before the crop, for a centre-cropping one)."""
    from featbank.data.images import min_decode_size
    from featbank.models.registry import get_spec

    return min_decode_size([get_spec(name).preprocess for name in backbones])


def _backbone_and_weights(backbone, weights, preprocess, engine: str):
    """Registry names as the config takes them; a user's module registered
    (:mod:`featbank.models.custom`), its weights its state_dict's digest."""
    if isinstance(backbone, (str, list, tuple)):
        if preprocess is not None:
            raise BadInput("preprocess is for a network passed as a module; a registry "
                           "backbone brings its own")
        return (backbone if isinstance(backbone, str) else list(backbone)), weights
    from featbank.models.custom import register_module

    if engine != "local":
        raise BadInput("a network passed as a module runs in this process only; use "
                       "engine='local'")
    name, _ = register_module(backbone, preprocess)
    return name, "module"  # resolved to the state_dict's digest (models.trunks)


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


def finetune(backbone: str, task: str, *, collection: str | None = None,
             init: str = "imagenet", freeze: str = "none", epochs: int = 100,
             patience: int = 7, optimizer: str = "sgd", lr: float = 1e-3,
             head_lr: float | None = None, batch_size: int = 32, image_size: int | None = None,
             augment: bool = False, balanced: bool = False, train_fraction: float = 1.0,
             precision: str = "auto", cache: PathLike = "cache",
             split: str | Sequence[float] | SplitSpec = (0.8, 0.1, 0.1), seed: int = 0,
             group_by: str | None = None, min_per_class: int | None = None,
             repeats: int = 1, resplit: bool = False, device: str = "auto",
             workers: int | None = None, progress: bool = True,
             log=quiet) -> list[FinetuneResult]:
    """Fine-tune a backbone with a new head on a task's saved split (the one
    :func:`featbank.api.grid.classify` uses), test its best-validation-loss weights,
    export its trunk. Every keyword is a ``finetune.py`` option (docs/finetune.md).

    Parameters
    ----------
    backbone, task : str
        A registry name; the label column to learn.
    collection : str, optional
        The collection in the cache (default: the only one it holds).
    init : str, default="imagenet"
        ``imagenet``, ``random`` (He-uniform, seeded) or a trunk or checkpoint file.
    freeze : str, default="none"
        ``none``, ``trunk``, the first K stages (``"K"``) or all but ``last:N``.
    epochs, patience, optimizer, lr, head_lr, batch_size, image_size, augment, balanced
        The recipe: early stopping on the validation loss after ``patience`` epochs,
        ``sgd`` (Nesterov), ``adam`` or ``rmsprop``, the head's own rate, random crops
        and flips, a class-balanced loss.
    train_fraction, precision, cache, device, workers, progress
        As ``finetune.py``'s options (``precision="auto"``: bf16 where native).
    split, seed, group_by, min_per_class, repeats, resplit
        The split, as for ``classify``; ``repeats`` trains on seeds ``seed + r``.
    log : callable
        Receives one line per epoch (default: silent).

    Returns
    -------
    list of FinetuneResult
        One per repeat: ``folder`` (the run folder, with ``trunk.pth`` for
        :func:`extract`), ``row`` (the results row), ``history`` (per epoch).
    """
    spec = SplitSpec.of(split, seed=seed, group_by=group_by, min_per_class=min_per_class)
    config = FinetuneConfig(
        backbone=backbone, task=task, init=init, freeze=freeze, epochs=epochs,
        patience=patience, optimizer=optimizer, lr=lr, head_lr=head_lr,
        batch_size=batch_size, image_size=image_size, augment=augment, balanced=balanced,
        train_fraction=train_fraction, seed=seed, precision=precision, device=device,
        workers=workers, cache_root=str(cache), split=spec, resplit=resplit,
        progress=progress, repeats=repeats)
    found = with_duplicate_groups(cached_collection(cache=cache, collection=collection),
                                  group_by, cache=cache, warn=log)
    from featbank.finetuning.train import finetune as run_training

    results = []
    for repeat in config.repeated():
        if config.repeats > 1:
            log(f"repeat with seed {repeat.seed} (split {repeat.split.tag})")
        results.append(run_training(found, repeat, log=log))
    return results
