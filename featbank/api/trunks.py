"""The analyses that run collection images through trunks, as functions: what changes
stage by stage between two trunks (:func:`layers`), each channel's top images
(:func:`top_images`), saliency maps (:func:`saliency`).

Each builds the sub-command's checked configuration from keywords, runs it on a
collection of the cache and returns its report: the dict that ``analyze.py``
writes as JSON, with the paths of the pictures it drew under
``<cache>/<collection>/analysis/<sub-command>/``.
"""
from __future__ import annotations

from typing import Sequence

from featbank.analysis.config import LayersConfig, SaliencyConfig, TopImagesConfig
from featbank.api.common import PathLike, SplitLike, quiet
from featbank.data.sources import cached_collection
from featbank.data.tasks import SplitSpec


def layers(backbone: str, weights: str, compare: str, *, collection: str | None = None,
           n: int = 500, seed: int = 0, batch_size: int = 32, workers: int | None = None,
           device: str = "auto", cache: PathLike = "cache", progress: bool = True,
           warn=quiet) -> dict:
    """Per stage, how far two trunks of one architecture are apart (Gonthier et al.).

    Parameters
    ----------
    backbone : str
    weights, compare : str
        The two trunks: ``imagenet``, ``random``, a weights file or a
        fine-tuning run folder.
    collection : str, optional
    n : int, default=500
        Collection images for CKA, a sample seeded with ``seed``.
    seed : int, default=0
    batch_size, workers, device
        How the images run through the trunks.
    cache : path, default="cache"
    progress, warn
        A progress bar; a callable for notes.

    Returns
    -------
    dict
        ``stages``: each stage's ``weight_distance`` and ``cka``; the plot's path.
    """
    from featbank.analysis.layers import layers as compare_stages

    config = LayersConfig(backbone=backbone, weights=str(weights), compare=str(compare), n=n,
                          seed=seed, batch_size=batch_size, workers=workers, device=device,
                          cache_root=str(cache), progress=progress)
    return compare_stages(cached_collection(cache=cache, collection=collection), config,
                          warn=warn)


def top_images(backbone: str, weights: str, *, compare: str | None = None,
               stage: str = "last", k: int = 9, task: str | None = None, n: int = 1000,
               seed: int = 0, batch_size: int = 32, workers: int | None = None,
               device: str = "auto", collection: str | None = None,
               cache: PathLike = "cache", progress: bool = True, warn=quiet) -> dict:
    """Each channel's most activating collection images, their class entropy and, with
    ``compare``, how much two trunks agree on them.

    Parameters
    ----------
    backbone, weights : str
    compare : str, optional
        A second trunk of the same architecture.
    stage : str, default="last"
        ``last``, a stage number from 1 or a stage name.
    k : int, default=9
        Images per channel.
    task : str, optional
        The labels whose entropy is measured (default: the collection's first task).
    n : int, default=1000
        Images run through the trunk when the feature cache cannot serve (0 = all),
        a sample seeded with ``seed``.
    seed : int, default=0
    batch_size, workers, device
        How the images run through the trunks.
    collection : str, optional
    cache : path, default="cache"
    progress, warn
        A progress bar; a callable for notes.

    Returns
    -------
    dict
        ``entropy``, ``label_entropy``, ``overlap`` (with ``compare``), the plot's path.
    """
    from featbank.analysis.top_images import top_images as rank

    config = TopImagesConfig(backbone=backbone, weights=str(weights),
                             compare=None if compare is None else str(compare),
                             stage=str(stage), k=k, task=task, n=n, seed=seed,
                             batch_size=batch_size, workers=workers, device=device,
                             cache_root=str(cache), progress=progress)
    return rank(cached_collection(cache=cache, collection=collection), config, warn=warn)


def saliency(*, run: PathLike | None = None, backbone: str | None = None,
             weights: str = "imagenet", task: str | None = None, head: str | None = None,
             method: str = "gradcam", n: int = 8, images: Sequence[PathLike] = (),
             sanity: bool = False, steps: int = 32, seed: int = 0,
             split: SplitLike = (0.8, 0.1, 0.1), group_by: str | None = None,
             min_per_class: int | None = None, device: str = "auto",
             collection: str | None = None, cache: PathLike = "cache",
             progress: bool = True, warn=quiet) -> dict:
    """Saliency maps of a fine-tuned run, or of a trunk with a stored linear head.

    Parameters
    ----------
    run : path, optional
        A fine-tuning run folder (its trunk and head).
    backbone, weights, task, head : str, optional
        Or: a trunk, with the head ``classify`` stored for ``task``.
    method : {"gradcam", "vbp", "ig"}, default="gradcam"
        Grad-CAM, VisualBackProp or integrated gradients (``steps`` points on the path).
    n : int, default=8
        Test images of the task's saved split (``split``, ``seed``, ``group_by``,
        ``min_per_class``), a seeded sample, when no ``images`` are given.
    sanity : bool, default=False
        Adebayo et al.'s model-randomisation test.
    device : str, default="auto"
    collection : str, optional
    cache : path, default="cache"
    progress, warn
        A progress bar; a callable for notes.

    Returns
    -------
    dict
        Per image its class and prediction, the grid's path, and with
        ``sanity`` the rank correlation with a re-initialised model.
    """
    from featbank.analysis.saliency import saliency as draw

    config = SaliencyConfig(method=method, run=None if run is None else str(run),
                            backbone=backbone, weights=str(weights), task=task, head=head,
                            n=n, images=[str(i) for i in images], sanity=sanity, steps=steps,
                            seed=seed, device=device, cache_root=str(cache), progress=progress,
                            split=SplitSpec.of(split, seed=seed, group_by=group_by,
                                               min_per_class=min_per_class))
    return draw(cached_collection(cache=cache, collection=collection), config, warn=warn)
