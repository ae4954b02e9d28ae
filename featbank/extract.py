"""Stream a collection's images through frozen backbones into the feature cache.

Each image is decoded once per run, whatever the number of backbones: a
DataLoader worker turns it into one uint8 view per distinct geometry (input
size, resize policy), and each backbone normalises its view on the device.
Only images not yet in a backbone's file are decoded, so a re-run is a no-op
and a killed run resumes where it stopped. Batches are cut from the list of
images still to do, in collection order, so a resumed run feeds the model the
same batches as an uninterrupted one (bitwise-equal features on CPU).
"""
from __future__ import annotations

import csv
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import __version__
from .backbones import BackboneSpec, get_spec, load_trunk, resolve_names, weights_id
from .cache import FeatureFile, count_rows, feature_path, read_skipped
from .collection import Collection, save_metadata
from .fileio import atomic_write_json
from .devicedecode import (decode_jpegs, device_decodable, device_index, device_resizable,
                           resize_views)
from .images import decode_views, min_decode_size, normalize

# Autocast is kept only when every feature row stays this close to fp32
# (relative L2 error), checked on the first batch of each backbone.
AUTOCAST_TOLERANCE = 1e-2
MAX_QUEUED = 4


@dataclass
class ExtractConfig:
    """The resolved settings of one extraction run (saved beside its output)."""

    backbones: str | list[str]  # "vgg19,resnet50", "all" or a list
    weights: str = "imagenet"
    cache_root: str = "cache"
    batch_size: int = 32
    workers: int = field(default_factory=lambda: max(1, min(8, (os.cpu_count() or 2) - 1)))
    device: str = "auto"
    dtype: str = "float32"
    precision: str = "auto"
    # cpu: Pillow in the DataLoader workers; device: nvJPEG on the GPU (JPEGs only,
    # the rest still by Pillow). auto = cpu for now: see _decode_on_device.
    decode: str = "auto"
    engine: str = "local"  # local: DataLoader on this machine; ray: Ray Data (extract_ray.py)
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray
    ray_actors: int | None = None  # trunk actors; None: one per GPU, or one without GPUs
    progress: bool = True

    def __post_init__(self):
        # Checked here, whatever there is to do: a complete cache must not hide a bad option.
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"--workers must be 0 or more, not {self.workers}")
        for option, value, choices in (("--dtype", self.dtype, ("float32", "float16")),
                                       ("--precision", self.precision, ("auto", "fp32", "bf16", "fp16")),
                                       ("--decode", self.decode, ("auto", "cpu", "device")),
                                       ("--engine", self.engine, ("local", "ray"))):
            if value not in choices:
                raise ValueError(f"unknown {option} {value!r}; use {', '.join(choices)}")
        if self.ray_actors is not None and self.ray_actors < 1:
            raise ValueError(f"--ray-actors must be at least 1, not {self.ray_actors}")
        if self.engine == "ray" and self.decode == "device":
            raise ValueError("--decode device is for --engine local; the Ray engine decodes "
                             "with Pillow in its tasks")


@dataclass
class ExtractReport:
    backbone: str
    path: Path
    n_rows: int
    n_new: int
    n_skipped: int
    seconds: float
    # From the first decoded batch to the committed file: the steady pipeline,
    # without starting workers or loading the model (None when nothing was to do).
    stream_seconds: float | None = None


class _Images(Dataset):
    """Item k -> (k, reason, views, jpeg): Pillow's uint8 views (one per geometry), or
    with ``jpeg_bytes`` and a file the device can decode, its bytes instead."""

    def __init__(self, paths: list[Path], pres: list, *, jpeg_bytes: bool = False):
        self.paths, self.pres, self.jpeg_bytes = paths, pres, jpeg_bytes
        self.min_size = min_decode_size(pres)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        if self.jpeg_bytes:
            data = _read_bytes(self.paths[k])
            if device_decodable(data):
                return k, "", None, data
        views, reason = decode_views(self.paths[k], self.pres, min_size=self.min_size)
        return k, reason, views, None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""  # Pillow then says why


@dataclass
class _Batch:
    """A batch from the loader; positions j index the batch, ``index[j]`` the pending list.

    ``cpu_views``: one (len(cpu_at), 3, S, S) uint8 tensor per geometry, decoded
    by Pillow. ``jpeg``: the bytes of the images at ``jpeg_at``, concatenated,
    image i ending at ``jpeg_ends[i]`` (one shared-memory tensor per batch).
    ``reasons[j]``: "" unless image j could not be decoded.
    """

    index: torch.Tensor
    reasons: list[str]
    cpu_at: list[int]
    cpu_views: list[torch.Tensor]
    jpeg_at: list[int]
    jpeg: torch.Tensor
    jpeg_ends: list[int]

    def pin_memory(self) -> "_Batch":  # called by DataLoader(pin_memory=True)
        self.cpu_views = [v.pin_memory() for v in self.cpu_views]
        return self

    def jpegs(self) -> list[torch.Tensor]:
        starts = [0, *self.jpeg_ends[:-1]]
        return [self.jpeg[s:e] for s, e in zip(starts, self.jpeg_ends)]


def _collate(items) -> _Batch:
    cpu_at = [j for j, item in enumerate(items) if item[2] is not None]
    jpeg_at = [j for j, item in enumerate(items) if item[3] is not None]
    cpu_views = []
    if cpu_at:
        n_views = len(items[cpu_at[0]][2])
        cpu_views = [torch.stack([items[j][2][g] for j in cpu_at]) for g in range(n_views)]
    blobs = [items[j][3] for j in jpeg_at]
    jpeg = (torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8) if blobs
            else torch.empty(0, dtype=torch.uint8))
    ends = np.cumsum([len(b) for b in blobs]).tolist()
    return _Batch(index=torch.tensor([item[0] for item in items]),
                  reasons=[item[1] for item in items], cpu_at=cpu_at, cpu_views=cpu_views,
                  jpeg_at=jpeg_at, jpeg=jpeg, jpeg_ends=ends)


def _device_views(batch: _Batch, pres: list, device: torch.device,
                  paths: list[Path]) -> tuple[list[torch.Tensor], list[str]]:
    """One (B, 3, S, S) uint8 tensor per geometry on ``device``, and the reasons."""
    reasons = list(batch.reasons)
    if len(batch.cpu_at) == len(reasons):  # everything decoded by Pillow
        return [v.to(device, non_blocking=True) for v in batch.cpu_views], reasons
    decoded = decode_jpegs(batch.jpegs(), device) if batch.jpeg_at else []
    if len(batch.jpeg_at) == len(reasons) and all(image is not None for image in decoded):
        return [resize_views(decoded, pre) for pre in pres], reasons  # the GPU's usual case
    views = [torch.zeros((len(reasons), 3, p.input_size, p.input_size), dtype=torch.uint8,
                         device=device) for p in pres]
    if batch.cpu_at:
        at = device_index(batch.cpu_at, device)
        for view, cpu in zip(views, batch.cpu_views):
            view[at] = cpu.to(device, non_blocking=True)
    good = [(j, image) for j, image in zip(batch.jpeg_at, decoded) if image is not None]
    if good:
        at = device_index([j for j, _ in good], device)
        for view, pre in zip(views, pres):
            view[at] = resize_views([image for _, image in good], pre)
    for j, image in zip(batch.jpeg_at, decoded):
        if image is None:  # refused by nvJPEG: Pillow decodes it, or says why not
            cpu, reasons[j] = decode_views(paths[int(batch.index[j])], pres,
                                           min_size=min_decode_size(pres))
            for view, pixels in zip(views, cpu):
                view[j] = pixels.to(device)
    return views, reasons


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    choices = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in choices:
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    return choices[precision]


def file_attrs(spec: BackboneSpec, weights: str, dtype: str, collection: str) -> dict:
    import torchvision

    if dtype not in ("float32", "float16"):
        raise ValueError(f"unknown storage dtype {dtype!r}; use float32 or float16")
    return {"backbone": spec.name, "feature_dim": spec.feature_dim, "weights": weights,
            **spec.preprocess.attrs(), "dtype": dtype, "collection": collection,
            "featbank_version": __version__, "torch_version": str(torch.__version__),
            "torchvision_version": str(torchvision.__version__),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


class TrunkRunner:
    """One frozen trunk on its device, with the autocast decision made on its first batch."""

    def __init__(self, spec: BackboneSpec, trunk: torch.nn.Module, device: torch.device,
                 autocast: torch.dtype | None):
        self.spec, self.device, self.autocast = spec, device, autocast
        self.trunk = trunk.to(device)
        if device.type == "cuda":
            self.trunk = self.trunk.to(memory_format=torch.channels_last)
        self.checked = autocast is None

    @torch.inference_mode()
    def submit(self, pixels: torch.Tensor) -> Callable[[], np.ndarray]:
        """Queue the forward pass of uint8 (B, 3, S, S) pixels; call the result for (B, D).

        On a GPU the features are copied to pinned memory without waiting, so
        the host prepares the next batch while this one runs.
        """
        x = normalize(pixels.to(self.device, non_blocking=True), self.spec.preprocess)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.checked:
            self._check_autocast(x)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                            enabled=self.autocast is not None):
            out = self.trunk(x).float()
        if out.shape != (x.shape[0], self.spec.feature_dim):
            raise AssertionError(f"{self.spec.name} gave {tuple(out.shape)}, "
                                 f"expected (B, {self.spec.feature_dim})")
        if self.device.type != "cuda":
            array = out.numpy()
            return lambda: array
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()

        def result() -> np.ndarray:
            copied.synchronize()
            return host.numpy()
        return result

    def _check_autocast(self, x: torch.Tensor) -> None:
        reference = self.trunk(x).float()
        with torch.autocast(self.device.type, dtype=self.autocast):
            fast = self.trunk(x).float()
        error = ((fast - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12)).max()
        if error > AUTOCAST_TOLERANCE:
            tqdm.write(f"{self.spec.name}: {self.autocast} features differ from fp32 by "
                       f"{error:.2e} (> {AUTOCAST_TOLERANCE}); using fp32")
            self.autocast = None
        self.checked = True


def extract(collection: Collection, config: ExtractConfig) -> list[ExtractReport]:
    """Fill the cache for every backbone of ``config``; returns one report per backbone."""
    names = resolve_names(config.backbones)
    specs = [get_spec(name) for name in names]
    wid = weights_id(config.weights)
    folder = Path(config.cache_root) / collection.name
    save_metadata(collection, folder)
    started = time.perf_counter()
    files, todo = {}, {}
    for spec in specs:
        out = FeatureFile(feature_path(config.cache_root, collection.name, spec.name, wid),
                          file_attrs(spec, wid, config.dtype, collection.name))
        out.check_compatible()
        out.merge()  # parts left by an interrupted run
        done = out.done_ids()
        files[spec.name], todo[spec.name] = out, {i for i in collection.ids if i not in done}
    pending = [i for i in collection.ids if any(i in t for t in todo.values())]
    first_batch_at = None
    if pending and config.engine == "ray":
        from .extract_ray import run_ray

        first_batch_at = time.perf_counter()
        run_ray(collection, pending, specs, files, todo, config)
    elif pending:
        first_batch_at = _run(collection, pending, specs, files, todo, config)
    for out in files.values():
        out.merge()
    stream = None if first_batch_at is None else time.perf_counter() - first_batch_at
    atomic_write_json(folder / "extract_config.json", {**asdict(config), "backbones": names,
                                                       "weights_id": wid})
    _write_skipped(folder, collection, [out.path for out in files.values()])
    seconds = time.perf_counter() - started
    return [_report(spec.name, files[spec.name].path, len(todo[spec.name]), seconds, stream)
            for spec in specs]


def _run(collection, pending, specs, files, todo, config: ExtractConfig) -> float | None:
    """Decode, forward and write the ``pending`` ids; returns when the first batch arrived."""
    device = resolve_device(config.device)
    autocast = autocast_dtype(config.precision, device)
    pres, view_of = shared_views(specs)
    runners = {s.name: TrunkRunner(s, load_trunk(s, config.weights), device, autocast) for s in specs}
    paths = [collection.path(i) for i in pending]
    loader = DataLoader(_Images(paths, pres, jpeg_bytes=_decode_on_device(config, pres)),
                        batch_size=config.batch_size, num_workers=max(0, config.workers),
                        collate_fn=_collate, pin_memory=device.type == "cuda", shuffle=False)
    first_batch_at = None
    # Parts are written by one thread, in order, while the device runs the next
    # batches; at most MAX_QUEUED batches wait (their features sit in pinned memory).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featbank-writer") as writer, \
            tqdm(total=len(pending), unit="img", disable=not config.progress,
                 desc=f"{collection.name}: {', '.join(runners)}") as bar:
        queued: deque[Future] = deque()
        for batch in loader:
            first_batch_at = first_batch_at or time.perf_counter()
            ids = [pending[k] for k in batch.index.tolist()]
            views, reasons = _device_views(batch, pres, device, paths)
            for spec in specs:
                write = _submit(ids, reasons, views[view_of[spec.name]], todo[spec.name],
                                runners[spec.name], files[spec.name])
                queued.append(writer.submit(write))
            while len(queued) > MAX_QUEUED * len(specs) or (queued and queued[0].done()):
                queued.popleft().result()  # raises what the writer raised
            bar.update(len(ids))
        while queued:
            queued.popleft().result()
    return first_batch_at


def shared_views(specs) -> tuple[list, dict[str, int]]:
    """One preprocessing per distinct geometry, and which of them each backbone reads."""
    geometries = list(dict.fromkeys(s.preprocess.geometry() for s in specs))
    pres = [next(s.preprocess for s in specs if s.preprocess.geometry() == g) for g in geometries]
    return pres, {s.name: geometries.index(s.preprocess.geometry()) for s in specs}


def _decode_on_device(config: ExtractConfig, pres: list) -> bool:
    """Whether JPEGs travel as bytes and are decoded on ``device`` (``--decode device``).

    Not the default yet: on an H100, nvJPEG overlapped with the forward pass ran
    ResNet50 at 5,400 img/s on 500x375 JPEGs, but stalled the GPU on a collection
    of 64-px JPEGs (README, "GPU"); Pillow in the workers never did.
    """
    if config.decode in ("auto", "cpu"):
        return False
    if not all(device_resizable(p) for p in pres):
        raise ValueError("--decode device cannot resize with "
                         f"{sorted({p.interpolation for p in pres})}; use --decode cpu")
    return True


def _submit(ids, reasons, pixels, todo, runner: TrunkRunner, out: FeatureFile) -> Callable[[], None]:
    """Queue one backbone's share of a batch; the returned call writes it as a part."""
    need, good, skipped = backbone_share(ids, reasons, todo)
    if good:
        features = runner.submit(pixels if len(good) == len(ids)
                                 else pixels[device_index(good, pixels.device)])
    else:
        empty = np.zeros((0, runner.spec.feature_dim), dtype=np.float32)
        features = lambda: empty  # noqa: E731

    def write() -> None:
        if need:
            out.add_batch([ids[j] for j in good], features(), skipped)
    return write


def backbone_share(ids: list[str], reasons: list[str],
                   todo: set[str]) -> tuple[list[int], list[int], dict[str, str]]:
    """Batch positions a backbone still needs, those of them decoded, and why the rest were not."""
    need = [j for j, i in enumerate(ids) if i in todo]
    good = [j for j in need if not reasons[j]]
    return need, good, {ids[j]: reasons[j] for j in need if reasons[j]}


def _report(name: str, path: Path, n_new: int, seconds: float,
            stream_seconds: float | None) -> ExtractReport:
    return ExtractReport(backbone=name, path=path, n_rows=count_rows(path), n_new=n_new,
                         n_skipped=len(read_skipped(path)), seconds=seconds,
                         stream_seconds=stream_seconds)


def _write_skipped(folder: Path, collection: Collection, paths: list[Path]) -> None:
    """``skipped.csv``: every image of the collection that has no feature row, and why."""
    rows = {ref: "listed in the manifest but no such file under the root"
            for ref in collection.missing}
    for path in paths:
        rows.update(read_skipped(path))
    target = folder / "skipped.csv"
    if not rows:
        target.unlink(missing_ok=True)
        return
    with open(target, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "reason"])
        writer.writerows(sorted(rows.items()))

