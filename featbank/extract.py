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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import __version__
from .backbones import BackboneSpec, get_spec, load_trunk, resolve_names, weights_id
from .cache import FeatureFile, count_rows, feature_path, read_skipped
from .collection import Collection, save_metadata
from .fileio import atomic_write_json
from .images import decode_views, min_decode_size, normalize

# Autocast is kept only when every feature row stays this close to fp32
# (relative L2 error), checked on the first batch of each backbone.
AUTOCAST_TOLERANCE = 1e-2


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
    progress: bool = True


@dataclass
class ExtractReport:
    backbone: str
    path: Path
    n_rows: int
    n_new: int
    n_skipped: int
    seconds: float


class _Views(Dataset):
    """Item k -> (k, ok, reason, view_0, view_1, ...): one uint8 view per geometry."""

    def __init__(self, paths: list[Path], pres: list):
        self.paths, self.pres = paths, pres
        self.min_size = min_decode_size(pres)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        views, reason = decode_views(self.paths[k], self.pres, min_size=self.min_size)
        return (k, not reason, reason, *views)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
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


class _Runner:
    """One frozen trunk on its device, with the autocast decision made on its first batch."""

    def __init__(self, spec: BackboneSpec, trunk: torch.nn.Module, device: torch.device,
                 autocast: torch.dtype | None):
        self.spec, self.device, self.autocast = spec, device, autocast
        self.trunk = trunk.to(device)
        if device.type == "cuda":
            self.trunk = self.trunk.to(memory_format=torch.channels_last)
        self.checked = autocast is None

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
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
        return out.cpu().numpy()

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
    if pending:
        _run(collection, pending, specs, files, todo, config)
    for out in files.values():
        out.merge()
    atomic_write_json(folder / "extract_config.json", {**asdict(config), "backbones": names,
                                                       "weights_id": wid})
    _write_skipped(folder, collection, [out.path for out in files.values()])
    seconds = time.perf_counter() - started
    return [_report(spec.name, files[spec.name].path, len(todo[spec.name]), seconds)
            for spec in specs]


def _run(collection, pending, specs, files, todo, config: ExtractConfig) -> None:
    device = resolve_device(config.device)
    autocast = _autocast_dtype(config.precision, device)
    geometries = list(dict.fromkeys(s.preprocess.geometry() for s in specs))
    pres = [next(s.preprocess for s in specs if s.preprocess.geometry() == g) for g in geometries]
    view_of = {s.name: geometries.index(s.preprocess.geometry()) for s in specs}
    runners = {s.name: _Runner(s, load_trunk(s, config.weights), device, autocast) for s in specs}
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {config.batch_size}")
    loader = DataLoader(_Views([collection.path(i) for i in pending], pres),
                        batch_size=config.batch_size, num_workers=max(0, config.workers),
                        pin_memory=device.type == "cuda", shuffle=False)
    with tqdm(total=len(pending), unit="img", disable=not config.progress,
              desc=f"{collection.name}: {', '.join(runners)}") as bar:
        for index, ok, reasons, *views in loader:
            ids = [pending[k] for k in index.tolist()]
            for spec in specs:
                _extract_batch(ids, ok.tolist(), reasons, views[view_of[spec.name]],
                               todo[spec.name], runners[spec.name], files[spec.name])
            bar.update(len(ids))


def _extract_batch(ids, ok, reasons, pixels, todo, runner, out: FeatureFile) -> None:
    need = [j for j, i in enumerate(ids) if i in todo]
    if not need:
        return
    good = [j for j in need if ok[j]]
    if good:
        batch = pixels if len(good) == len(ids) else pixels[good]
        features = runner(batch)
    else:
        features = np.zeros((0, runner.spec.feature_dim), dtype=np.float32)
    skipped = {ids[j]: reasons[j] for j in need if not ok[j]}
    out.add_batch([ids[j] for j in good], features, skipped)


def _report(name: str, path: Path, n_new: int, seconds: float) -> ExtractReport:
    return ExtractReport(backbone=name, path=path, n_rows=count_rows(path), n_new=n_new,
                         n_skipped=len(read_skipped(path)), seconds=seconds)


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

