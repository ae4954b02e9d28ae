"""Where a classifier looks: saliency maps over test images (Sabatelli et al. §5).

The classifier is a fine-tuned run (its trunk and head), or a trunk with the
linear head ``classify.py`` stored for a task, turned into torch layers. Methods:

- ``gradcam``: Grad-CAM (Selvaraju et al. 2017) on the last stage, by captum;
- ``ig``: integrated gradients (Sundararajan et al. 2017) from a black image, by
  captum; the map is the absolute attribution summed over colour channels;
- ``vbp``: VisualBackProp (Bojarski et al. 2016), the seed paper's method, which
  no maintained library implements: see :func:`visual_backprop`.

Maps explain the predicted class (VisualBackProp explains no class: it is
class-agnostic by design). ``--sanity`` runs the model-randomisation test of
Adebayo et al. 2018: the same maps from a copy whose every layer is
re-initialised; the mean Spearman rank correlation between the two is low
when the maps depend on what the model learned.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featbank.analysis.common import file_label, output_folder
from featbank.analysis.config import SaliencyConfig
from featbank.analysis.networks import Stage, load_network, load_run, named_stages, sample_ids
from featbank.analysis.stored_heads import Classifier, head_to_torch, stored_head
from featbank.core.errors import BadInput, MissingFile
from featbank.core.fileio import atomic_path, atomic_write_json
from featbank.data.collection import Collection
from featbank.data.images import decode_views, normalize
from featbank.data.saved_splits import load_or_make_split
from featbank.evaluation.plots import plot_image_grid
from featbank.models.inference import resolve_device

CHUNK = 8  # images per attribution call
ALPHA = 0.5  # heat-map opacity on the overlays


# -- maps -------------------------------------------------------------------------------------

def visual_backprop(trunk: nn.Module, stage_list: list[Stage], x: torch.Tensor) -> torch.Tensor:
    """VisualBackProp (Bojarski et al. 2016, §2): (B, 3, S, S) -> (B, S, S) maps.

    The feature maps of every stage (the paper's layers; after ReLU, so
    clamped at 0) are averaged over channels. From the deepest, each averaged
    map is scaled up to the size of the one before by a deconvolution whose
    weights are all 1 (bias 0) and multiplied point-wise with it; the last
    product is scaled up to the input. The paper's deconvolution takes the
    kernel and stride of the layer between the two maps; between stages that
    may hold several layers, the stride here is the size ratio and the kernel
    twice the stride, which covers every output pixel equally (an odd kernel
    leaves a checkerboard), with a bilinear resize for the pixel or two that
    padding leaves over.
    """
    averaged = []

    def hook(module, inputs, output):
        if output.dim() == 4:
            mean = output.detach().clamp(min=0).mean(dim=1, keepdim=True)
            # Scaled per image (the product is normalised at the end): no underflow.
            averaged.append(mean / mean.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12))

    handles = [s.modules[-1].register_forward_hook(hook) for s in stage_list]
    try:
        with torch.no_grad():
            trunk(x)
    finally:
        for handle in handles:
            handle.remove()
    if not averaged:
        raise BadInput("VisualBackProp needs convolutional feature maps; this trunk has none")
    mask = averaged[-1]
    for previous in reversed(averaged[:-1]):
        mask = _deconvolve(mask, previous.shape[-2:]) * previous
    return _deconvolve(mask, x.shape[-2:])[:, 0]


def _deconvolve(mask: torch.Tensor, size) -> torch.Tensor:
    """Scale (B, 1, h, w) up to ``size`` with an all-ones transposed convolution."""
    h, w = mask.shape[-2:]
    if (h, w) == tuple(size):
        return mask
    stride = max(1, round(size[0] / h))
    if stride > 1:
        kernel = torch.ones(1, 1, 2 * stride, 2 * stride, device=mask.device, dtype=mask.dtype)
        mask = F.conv_transpose2d(mask, kernel, stride=stride, padding=stride // 2)
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False)
    return mask


def saliency_maps(model: Classifier, stage_list: list[Stage], x: torch.Tensor,
                  targets: torch.Tensor, method: str, *, steps: int = 32) -> np.ndarray:
    """(B, 3, S, S) normalised inputs -> (B, S, S) maps in [0, 1], one per image."""
    if method == "vbp":
        maps = visual_backprop(model.trunk, stage_list, x)
    else:
        try:
            from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
        except ImportError:
            raise ImportError("Grad-CAM and integrated gradients use captum: pip install "
                              "captum (or pip install -e '.[analysis]')") from None
        x = x.clone().requires_grad_(True)
        if method == "gradcam":
            cam = LayerGradCam(model, stage_list[-1].modules[-1]).attribute(
                x, target=targets, relu_attributions=True)
            maps = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]),
                                                interpolate_mode="bilinear")[:, 0]
        else:
            attributions = IntegratedGradients(model).attribute(
                x, baselines=torch.zeros_like(x), target=targets, n_steps=steps,
                internal_batch_size=min(steps, 16))
            maps = attributions.abs().sum(dim=1)
    maps = maps.detach().float().cpu().numpy()
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0.0)


def randomised(model: Classifier, seed: int) -> Classifier:
    """A copy with every layer re-initialised (Adebayo et al.'s full model randomisation)."""
    copied = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in copied.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return copied.eval().requires_grad_(False)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two maps; None when one is constant: it ranks
    nothing, so the randomisation test says nothing about it (not that it passed)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def overlay(view: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 image with a (S, S) map in [0, 1] blended over it (jet)."""
    from matplotlib import colormaps

    colours = colormaps["jet"](heat)[..., :3] * 255
    return (view * (1 - ALPHA) + colours * ALPHA).astype(np.uint8)


# -- the command -----------------------------------------------------------------------------

def saliency(collection: Collection, config: SaliencyConfig, *, warn=print) -> dict:
    """Maps of ``config``'s classifier over test images (or the images given); writes PNG
    overlays, a grid and JSON, returns the JSON."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    network, model, classes, task, split_spec, source = _classifier(collection, config)
    keys, paths, truths = _images(collection, config, task, split_spec)
    views = _views(keys, paths, network.preprocess)
    batches = [normalize(views[k:k + CHUNK], network.preprocess)
               for k in range(0, len(views), CHUNK)]
    model.to(device)
    with torch.no_grad():
        probabilities = torch.cat([torch.softmax(model(x.to(device)).float(), dim=1).cpu()
                                   for x in batches])
    targets = probabilities.argmax(1)
    models = {"trained": model}
    if config.sanity:
        models["randomised"] = randomised(model, config.seed)
    maps = {name: _maps(m, batches, targets, config, device) for name, m in models.items()}
    folder = output_folder(config.cache_root, collection.name, "saliency")
    stem = (f"{file_label(network.label)}__{config.method}" if config.run else
            f"{file_label(task)}__{network.spec.name}__{file_label(network.label)}__{config.head}"
            f"__{config.method}")
    (folder / stem).mkdir(exist_ok=True)
    results, grid = _pictures(folder / stem, keys, views, truths, maps, classes,
                              probabilities.numpy(), sanity=config.sanity)
    report = {
        "command": "saliency", "collection": collection.name, "method": config.method,
        "source": source, "run": config.run, "backbone": network.spec.name,
        "weights": network.weights.id, "weights_exact": network.weights.exact, "head": config.head,
        "task": task, "classes": classes, "target": "none (class-agnostic)"
        if config.method == "vbp" else "predicted class", "n_images": len(keys),
        # over the images whose label is known (images given from outside have none)
        "accuracy": _accuracy(results),
        "images": results, "settings": {**asdict(config), "split": split_spec.tag}}
    if config.sanity:
        report["sanity_test"] = "full model randomisation (Adebayo et al. 2018)"
        defined = [r["rank_correlation"] for r in results if r["rank_correlation"] is not None]
        report["sanity_rank_correlation"] = float(np.mean(defined)) if defined else None
        report["sanity_images"] = len(defined)  # a constant map has no rank correlation
    report["png"] = str(plot_image_grid(
        grid, folder / f"{stem}_grid.png", cell=2.0,
        title=f"{config.method}: {network.spec.name} ({source}), {task}"))
    report["seconds"] = round(time.perf_counter() - started, 3)
    report["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(folder / f"{stem}.json", report)
    report["json"] = str(folder / f"{stem}.json")
    return report


def _views(keys: list[str], paths: list[Path], pre) -> torch.Tensor:
    """The images' uint8 views (n, 3, S, S); an unreadable image is bad input."""
    views = []
    for key, path in zip(keys, paths):
        [view], reason = decode_views(path, [pre])
        if reason:
            raise BadInput(f"image {key} cannot be read: {reason}")
        views.append(view)
    return torch.stack(views)


def _maps(model: Classifier, batches: list[torch.Tensor], targets: torch.Tensor,
          config: SaliencyConfig, device: torch.device) -> np.ndarray:
    """One model's maps (n, S, S) of every batch, for the targets given."""
    model.to(device)
    stage_list = named_stages(model.trunk)
    maps = np.concatenate([
        saliency_maps(model, stage_list, x.to(device), y.to(device), config.method,
                      steps=config.steps) for x, y in zip(batches, targets.split(CHUNK))])
    model.cpu()
    return maps


def _pictures(folder: Path, keys: list[str], views: torch.Tensor, truths: list, maps: dict,
              classes: list[str], probabilities: np.ndarray, *, sanity: bool
              ) -> tuple[list[dict], list]:
    """Each image's overlay (PNG beside the picture), its entry in the JSON, and its row
    of the grid (picture, overlay and with ``sanity`` the randomised model's overlay)."""
    results, grid = [], []
    predicted = probabilities.argmax(1)
    for k, key in enumerate(keys):
        view = views[k].permute(1, 2, 0).numpy()
        picture = overlay(view, maps["trained"][k])
        out = folder / f"{k:03d}__{file_label(Path(key).stem)}.png"
        _save_png(out, np.concatenate([view, picture], axis=1))
        item = {"image": key, "true": truths[k], "predicted": classes[predicted[k]],
                "probability": float(probabilities[k, predicted[k]]), "overlay": str(out)}
        row = [(view, f"true: {str(truths[k] or '?')[:18]}"),
               (picture, f"pred: {classes[predicted[k]][:14]} ({item['probability']:.2f})")]
        if sanity:
            item["rank_correlation"] = rank_correlation(maps["trained"][k], maps["randomised"][k])
            row.append((overlay(view, maps["randomised"][k]),
                        "randomised (ρ undefined: a constant map)"
                        if item["rank_correlation"] is None else
                        f"randomised (ρ = {item['rank_correlation']:.2f})"))
        results.append(item)
        grid.append((Path(key).name[:18], row))
    return results, grid


def _classifier(collection: Collection, config: SaliencyConfig):
    """(network, trunk + head as one module, classes, task, split, what it is)."""
    if config.run:
        network = load_run(config.run, progress=config.progress)
        head, classes = network.head, network.classes
        task, split_spec, source = network.task, network.split or config.split, "fine-tuned run"
    else:
        pipeline = stored_head(collection, config)
        network = load_network(config.backbone, config.weights, progress=config.progress)
        head, classes = head_to_torch(pipeline), [str(c) for c in pipeline.classes_]
        task, split_spec, source = config.task, config.split, f"off-the-shelf {config.head}"
    if task not in collection.labels:
        raise BadInput(f"the classifier's task {task!r} is not a task of collection "
                         f"{collection.name!r} ({', '.join(collection.tasks) or 'none'})")
    model = Classifier(network.trunk, head).eval().requires_grad_(False)
    return network, model, classes, task, split_spec, source


def _accuracy(results: list[dict]) -> float | None:
    known = [r["true"] == r["predicted"] for r in results if r["true"] is not None]
    return float(np.mean(known)) if known else None


def _images(collection: Collection, config: SaliencyConfig, task: str, split_spec):
    """(keys, paths, true labels): the images given, else a seeded sample of the test part."""
    labels = collection.labels_by_id()[task]
    if config.images:
        keys, paths, truths = [], [], []
        root = collection.root.resolve()
        for image in config.images:
            path = Path(image)
            if not path.is_file():
                path = collection.path(image)  # an id of the collection
            if not path.is_file():
                raise MissingFile(f"image {image} not found (a file, or an id of "
                                        f"collection {collection.name!r})")
            resolved = path.resolve()
            inside = resolved.is_relative_to(root)
            key = resolved.relative_to(root).as_posix() if inside else str(path)
            keys.append(key)
            paths.append(path)
            truths.append(labels.get(key))  # None: not an image of the collection
        return keys, paths, truths
    folder = Path(config.cache_root) / collection.name
    split = load_or_make_split(collection, task, split_spec, folder)
    test_ids, test_labels = split.select("test")
    chosen = sample_ids(list(range(len(test_ids))), config.n, config.seed)
    return ([test_ids[k] for k in chosen], [collection.path(test_ids[k]) for k in chosen],
            [test_labels[k] for k in chosen])


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
