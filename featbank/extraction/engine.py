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

import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_write_json, hold_lock
from featbank.data.collection import Collection, save_metadata
from featbank.extraction.config import ExtractConfig
from featbank.extraction.devicedecode import (
    DecoderBalance,
    device_index,
    device_resizable,
    jpeg_decoder,
)
from featbank.extraction.loader import Images, batches_on_device, collate
from featbank.models.inference import (
    AUTOCAST,
    TrunkRunner,
    backbone_share,
    resolve_device,
    resolve_precision,
    resolve_workers,
    shared_views,
    tf32_in_use,
)
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk, resolve_weights
from featbank.store.features import count_rows, read_skipped, write_skipped_list
from featbank.store.provenance import feature_path, file_attrs
from featbank.store.repair import repair
from featbank.store.writer import FeatureWriter

MAX_QUEUED = 4

__all__ = ["ExtractConfig", "ExtractReport", "extract"]


@dataclass
class ExtractReport:
    backbone: str
    path: Path
    n_rows: int  # in the file now
    n_new: int  # images this run tried (not in the file before)
    n_skipped: int  # images of the file's collection that could not be decoded
    seconds: float
    n_added: int = 0  # rows this run added
    # From the first decoded batch to the committed file: the steady pipeline,
    # without starting workers or loading the model (None when nothing was to do).
    stream_seconds: float | None = None
    # With --decode device: the images handed to nvJPEG (the others, and any it refused,
    # were decoded by Pillow), and the library that called it.
    device_decoded: int | None = None
    jpeg_decoder: str | None = None
    # The collection, its list of images without a row, and its hidden or system files
    # left out.
    collection: str = ""
    skipped_csv: Path | None = None
    ignored: int = 0


def extract(collection: Collection, config: ExtractConfig) -> list[ExtractReport]:
    """Fill the cache for every backbone of ``config``; returns one report per backbone."""
    device = resolve_device(config.device)  # a missing GPU is an error even with nothing to do
    specs = [get_spec(name) for name in config.backbones]
    decoder = _device_decoder(config, specs)
    weights = {s.name: resolve_weights(s, config.weights) for s in specs}
    folder = Path(config.cache_root) / collection.name
    save_metadata(collection, folder)
    files = {}
    made = {"decode": _decode_mode(config, decoder), "tf32": tf32_in_use(device),
            "precision": resolve_precision(config.precision, device)}
    for spec in specs:
        attrs = file_attrs(backbone=spec.name, feature_dim=spec.feature_dim,
                           preprocess=spec.preprocess.attrs(), weights=weights[spec.name].attrs(),
                           dtype=config.dtype, collection=collection.name, **made)
        files[spec.name] = FeatureWriter(feature_path(config.cache_root, collection.name, spec.name,
                                                    weights[spec.name].id), attrs)
    with ExitStack() as held:
        for out in sorted(files.values(), key=lambda f: f.path):  # one order: no deadlock
            held.enter_context(hold_lock(out.lock_path, on_wait=lambda o=out: tqdm.write(
                f"waiting for another run that is writing {o.path}")))
        reports = _extract_locked(collection, config, specs, files, device, decoder)
    atomic_write_json(folder / "extract_config.json",
                      {**asdict(config), "workers": resolve_workers(config.workers, device),
                       "jpeg_decoder": decoder,
                       "weights_exact": {n: w.exact for n, w in weights.items()}})
    skipped_csv = write_skipped_list(folder, collection.missing,
                                     [f.path for f in files.values() if f.path.is_file()])
    _refuse_empty_files(files, collection, skipped_csv)
    for report in reports:
        report.collection = collection.name
        report.skipped_csv, report.ignored = skipped_csv, collection.ignored
    return reports


def _extract_locked(collection, config: ExtractConfig, specs, files: dict, device,
                    decoder: str | None):
    started = time.perf_counter()
    todo, before = {}, {}
    for spec in specs:
        out = files[spec.name]
        repaired = repair(out.path)  # a damaged file keeps its readable rows; the rest is redone
        if repaired:
            tqdm.write(str(repaired), file=sys.stderr)
        _settle_provenance(out, config)
        out.merge()  # parts left by an interrupted run
        done = out.done_ids()
        todo[spec.name] = {i for i in collection.ids if i not in done}
        before[spec.name] = count_rows(out.path) if out.path.is_file() else 0
    pending = [i for i in collection.ids if any(i in t for t in todo.values())]
    first_batch_at, device_decoded = None, None
    if pending and config.engine == "ray":
        from featbank.extraction.ray_engine import run_ray

        first_batch_at = time.perf_counter()
        run_ray(collection, pending, specs, files, todo, config)
    elif pending:
        first_batch_at, device_decoded = _run(collection, pending, specs, files, todo, config,
                                              device, decoder)
    for out in files.values():
        out.merge()
    stream = None if first_batch_at is None else time.perf_counter() - first_batch_at
    seconds = time.perf_counter() - started
    return [_report(spec.name, files[spec.name].path, len(todo[spec.name]), before[spec.name],
                    seconds, stream, device_decoded, decoder) for spec in specs]


def _run(collection, pending, specs, files, todo, config: ExtractConfig,
         device: torch.device, decoder: str | None) -> tuple[float | None, int | None]:
    """Decode, forward and write the ``pending`` ids; ``decoder``: the JPEG decoder
    with ``--decode device``, else None.

    Returns when the first batch arrived, and with ``--decode device`` how many
    images the device decoded.
    """
    pres, view_of = shared_views(specs)
    runners = {s.name: _runner(s, files[s.name], config, device) for s in specs}
    paths = [collection.path(i) for i in pending]
    on_device = decoder is not None
    workers = resolve_workers(config.workers, device)
    balance = DecoderBalance(workers) if config.decode == "device+pillow" else None
    loader = DataLoader(Images(paths, pres, jpeg_bytes=on_device, balance=balance),
                        batch_size=config.batch_size, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda", shuffle=False)
    first_batch_at, device_decoded = None, 0
    # Parts are written by one thread, in order, while the device runs the next
    # batches; at most MAX_QUEUED batches wait (their features sit in pinned memory).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featbank-writer") as writer, \
            tqdm(total=len(pending), unit="img", disable=not config.progress,
                 desc=f"{collection.name}: {', '.join(runners)}") as bar:
        queued: deque[Future] = deque()
        for batch, views, reasons in batches_on_device(loader, pres, device, paths,
                                                         decode_ahead=on_device, balance=balance,
                                                         decoder=decoder or "auto"):
            first_batch_at = first_batch_at or time.perf_counter()
            device_decoded += len(batch.jpeg_at)
            ids = [pending[k] for k in batch.index.tolist()]
            for spec in specs:
                write = _submit(ids, reasons, views[view_of[spec.name]], todo[spec.name],
                                runners[spec.name], files[spec.name])
                queued.append(writer.submit(write))
            while len(queued) > MAX_QUEUED * len(specs) or (queued and queued[0].done()):
                queued.popleft().result()  # raises what the writer raised
            bar.update(len(ids))
        while queued:
            queued.popleft().result()
    return first_batch_at, device_decoded if on_device else None


def _refuse_empty_files(files: dict, collection: Collection, skipped_csv: Path) -> None:
    """A feature file exists only once it holds rows: when no image of the collection
    could be decoded, the file a run began is removed (``skipped.csv`` keeps why) and
    the run is bad input."""
    empty = [out for out in files.values() if out.path.is_file() and count_rows(out.path) == 0]
    if not empty:
        return
    for out in empty:
        out.path.unlink()
        if out.shards.is_dir():
            shutil.rmtree(out.shards)
    raise BadInput(f"no image of collection {collection.name!r} could be decoded "
                   f"({len(collection.ids)} listed with their reasons in {skipped_csv}); no "
                   "feature file was written")


def _settle_provenance(out: FeatureWriter, config: ExtractConfig) -> None:
    """Make sure this run adds rows made as the file's were, or starts a new file.

    ``--precision auto`` continues a file in the precision it records; any other
    difference is refused in one line (``check_compatible``), or with ``force_new``
    the old file is set aside (kept in ``features/replaced/``) for a new one.
    """
    stored = [attrs for _, attrs in out.stored_attrs() if attrs.get("precision")]
    if config.precision == "auto" and stored:
        out.attrs["precision"] = stored[0]["precision"]
    if config.force_new:
        try:
            out.check_compatible()
        except BadInput:
            where = out.set_aside()
            tqdm.write(f"{out.path.name}: its rows were made otherwise; kept in {where}, "
                       "starting a new file (--force-new)")
    out.check_compatible()


def _decode_mode(config: ExtractConfig, decoder: str | None) -> str:
    """How rows are decoded, as the file's provenance records it."""
    if decoder is None:
        return "pillow"
    return f"{'nvjpeg+pillow' if config.decode == 'device+pillow' else 'nvjpeg'}:{decoder}"


def _device_decoder(config: ExtractConfig, specs: list) -> str | None:
    """With ``--decode device``, the JPEG decoder's name (JPEGs travel as bytes and are
    decoded on the device); else None.

    Not the default yet: on an H100, nvJPEG overlapped with the forward pass ran
    ResNet50 at 5,400 img/s on 500x375 JPEGs, but stalled the GPU on a collection
    of 64-px JPEGs (docs/gpu.md); Pillow in the workers never did. (Measured
    with torchvision's decoder, before the decoding went a batch ahead and Pillow
    took a share of the JPEGs.)
    """
    if config.decode in ("auto", "cpu"):
        return None
    pres, _ = shared_views(specs)
    if not all(device_resizable(p) for p in pres):
        raise BadInput("--decode device cannot resize with "
                         f"{sorted({p.interpolation for p in pres})}; use --decode cpu")
    return jpeg_decoder(config.jpeg_decoder)[0]


def _runner(spec, out: FeatureWriter, config: ExtractConfig, device) -> TrunkRunner:
    """The backbone's trunk in the file's precision. Only a file with no rows yet has its
    autocast checked against fp32 (and falls back to fp32): rows already made settled it."""
    trunk = load_trunk(spec, config.weights, progress=config.progress)
    return TrunkRunner(spec, trunk, device, AUTOCAST[out.attrs["precision"]],
                       check=not out.stored_attrs())


def _submit(ids, reasons, pixels, todo, runner: TrunkRunner,
            out: FeatureWriter) -> Callable[[], None]:
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
            out.attrs["precision"] = runner.precision  # settled by the first batch's check
            out.add_batch([ids[j] for j in good], features(), skipped)
    return write


def _report(name: str, path: Path, n_new: int, rows_before: int, seconds: float,
            stream_seconds: float | None, device_decoded: int | None,
            decoder: str | None) -> ExtractReport:
    exists = path.is_file()
    n_rows = count_rows(path) if exists else 0
    return ExtractReport(backbone=name, path=path, n_rows=n_rows, n_added=n_rows - rows_before,
                         n_new=n_new, n_skipped=len(read_skipped(path)) if exists else 0,
                         seconds=seconds, stream_seconds=stream_seconds,
                         device_decoded=device_decoded,
                         jpeg_decoder=None if device_decoded is None else decoder)
