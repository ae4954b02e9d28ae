"""The Ray engine of extraction: the images still to do, through Ray Data.

``extract(..., ExtractConfig(engine="ray"))`` calls ``run_ray`` instead of the
local DataLoader loop. Two Ray Data stages:

1. ``_decode`` (tasks, CPU): Pillow decodes a block of paths into one uint8
   view per geometry, with the reason for each file it cannot decode;
2. ``_Trunks`` (an actor pool, one GPU per actor where the cluster has GPUs):
   every backbone's frozen trunk, loaded once per actor.

The driver receives the batches in order (``preserve_order``) and writes them
as parts of the same feature files, at the same paths, as a local run: the
file is resumable and crash-safe in the same way, and its ids come out in the
same order. Workers must see the images and any ``--weights PATH`` at the same
paths as the driver (a shared file system on a cluster).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from featbank.core.errors import BadInput
from featbank.core.hashing import UNKNOWN, Stamp, read_stamped
from featbank.data.iiif_store import canvas_json, ensure_image
from featbank.data.images import decode_views
from featbank.models.fold import fold_batchnorm
from featbank.models.inference import (
    AUTOCAST,
    TrunkRunner,
    add_share,
    backbone_share,
    resolve_device,
    shared_views,
)
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk
from featbank.store.provenance import recorded


def run_ray(collection, pending: list[str], specs, files, todo, config) -> None:
    """Extract ``pending`` ids for ``specs`` on Ray; parts go to ``files`` (see ``extract``)."""
    ray = _ray()
    if not ray.is_initialized():  # a one-line summary is the script's output, not Ray's INFO log
        ray.init(address=config.ray_address, log_to_driver=False, logging_level=logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if config.device != "cpu" else 0
    actors = config.ray_actors or max(1, gpus)
    _settle_folding(specs, files, config, gpus)
    # Without GPUs an actor's CPUs are its torch threads (Ray sets OMP_NUM_THREADS);
    # one CPU per actor is left to the decoding tasks.
    cpus_per_actor = 1 if gpus else max(1, int(resources.get("CPU", 1)) // actors - 1)
    pres, _ = shared_views(specs)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in collection order, as locally
    context.enable_progress_bars = config.progress
    downloads = collection.downloads  # a IIIF collection: the tasks fetch its images
    fetch = None if downloads is None else (downloads.short_side, downloads.client.politeness,
                                            downloads.client.offline)
    items = [{"k": k, "path": str(collection.path(i)),
              "canvas": canvas_json(downloads.canvases[i]) if downloads else ""}
             for k, i in enumerate(pending)]
    dataset = (ray.data.from_items(items)
               .map_batches(_decode, fn_kwargs={"pres": pres, "fetch": fetch},
                            batch_size=config.batch_size or 32, batch_format="numpy")
               .map_batches(_Trunks, fn_constructor_kwargs={
                                "names": [s.name for s in specs], "weights": config.weights,
                                "device": config.device if gpus else "cpu",
                                # the files' provenance, settled by the driver (extract)
                                "made": {s.name: _made(files[s.name]) for s in specs}},
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            num_gpus=1 if gpus else 0, num_cpus=cpus_per_actor,
                            batch_size=config.batch_size or 32,
                            batch_format="numpy"))
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        ids = [pending[k] for k in batch["k"].tolist()]
        reasons = [str(r) for r in batch["reason"]]
        stamps = [Stamp(int(s), int(m), str(h)) for s, m, h in
                  zip(batch["size"], batch["mtime_ns"], batch["sha256"])]
        for spec in specs:
            need, good, _ = backbone_share(ids, reasons, todo[spec.name])
            add_share(files[spec.name], ids, reasons, stamps, need, good,
                      batch[f"features:{spec.name}"][good])


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BadInput("--engine ray needs Ray: pip install 'featbank[ray]' "
                         "(or use --engine local)") from None
    return ray


def _decode(batch: dict[str, np.ndarray], pres: list, fetch=None) -> dict[str, np.ndarray]:
    """A block of paths -> ``view:<g>`` (B, 3, S, S) uint8 per geometry, reasons, and the
    stamp of each file as read (``size``, ``mtime_ns``, ``sha256``; -1 and "" unreadable).
    With ``fetch`` (a IIIF collection's size, politeness and offline flag), an image not
    stored yet is fetched here first."""
    decoded, stamps = [], []
    for path, canvas in zip(batch["path"], batch["canvas"]):
        missing = ensure_image(str(canvas), path, *fetch) if fetch and canvas else ""
        if missing:
            decoded.append((decode_views(b"", pres)[0], missing))
            stamps.append(UNKNOWN)
            continue
        try:
            data, stamp = read_stamped(path)
        except OSError:
            data, stamp = str(path), UNKNOWN  # decode_views says why
        decoded.append(decode_views(data, pres))
        stamps.append(stamp)
    out = {"k": batch["k"], "reason": np.array([reason for _, reason in decoded], dtype=object),
           "size": np.array([s.size for s in stamps], dtype=np.int64),
           "mtime_ns": np.array([s.mtime_ns for s in stamps], dtype=np.int64),
           "sha256": np.array([s.sha256 for s in stamps], dtype=object)}
    for g in range(len(pres)):
        out[f"view:{g}"] = np.stack([views[g].numpy() for views, _ in decoded])
    return out


def _settle_folding(specs, files, config, gpus: int) -> None:
    """A new file records whether its rows are made with batch norms folded, as the actors
    will make them: never on GPUs (``can_fold``), else where the trunk folds (the driver
    loads it once to see)."""
    for spec in specs:
        out = files[spec.name]
        if not out.stored_attrs() and out.attrs.get("fold_bn"):
            out.attrs["fold_bn"] = not gpus and fold_batchnorm(
                load_trunk(spec, config.weights, progress=False),
                spec.preprocess.input_size) is not None


def _made(out) -> dict:
    """How a file's rows are computed, which every actor must follow: its precision (checked
    against fp32 only while the file has no rows), whether TF32 is on, its layout and
    whether batch norms are folded."""
    return {"precision": out.attrs["precision"], "tf32": bool(out.attrs["tf32"]),
            "memory_format": recorded(out.attrs, "memory_format"),
            "fold_bn": bool(recorded(out.attrs, "fold_bn")), "check": not out.stored_attrs()}


class _Trunks:
    """Ray Data actor: every backbone's trunk, loaded once; views in, features out.

    Each trunk computes in its file's recorded precision (an autocast that strays from
    fp32 is refused, not replaced: other actors may have used it), with TF32 as recorded.
    """

    def __init__(self, names: list[str], weights: str, device: str, made: dict):
        specs = [get_spec(name) for name in names]
        _, self.view_of = shared_views(specs)
        target = resolve_device(device)
        tf32 = any(m["tf32"] for m in made.values())
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        self.runners = {s.name: TrunkRunner(s, load_trunk(s, weights, progress=False), target,
                                            AUTOCAST[made[s.name]["precision"]],
                                            check=made[s.name]["check"], past_tolerance="refuse",
                                            layout=made[s.name]["memory_format"],
                                            fold=made[s.name]["fold_bn"])
                        for s in specs}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = np.flatnonzero(batch["reason"] == "")
        out = {k: batch[k] for k in ("k", "reason", "size", "mtime_ns", "sha256")}
        for name, runner in self.runners.items():
            features = np.zeros((len(batch["k"]), runner.spec.feature_dim), dtype=np.float32)
            if good.size:
                pixels = torch.from_numpy(np.ascontiguousarray(
                    batch[f"view:{self.view_of[name]}"][good]))
                features[good] = runner.submit(pixels)()
            out[f"features:{name}"] = features
        return out


