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

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_write_json, hold_lock
from featbank.data.collection import Collection, save_metadata
from featbank.data.images import decode_views, min_decode_size
from featbank.extraction.config import ExtractConfig
from featbank.extraction.devicedecode import (
    DecoderBalance,
    decode_jpegs,
    device_decodable,
    device_index,
    device_resizable,
    jpeg_decoder,
    resize_views,
)
from featbank.models.inference import (
    TrunkRunner,
    autocast_dtype,
    backbone_share,
    resolve_device,
    resolve_workers,
    shared_views,
)
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk, resolve_weights
from featbank.store.features import count_rows, read_skipped, write_skipped_list
from featbank.store.provenance import feature_path, file_attrs
from featbank.store.writer import FeatureWriter

MAX_QUEUED = 4

__all__ = ["ExtractConfig", "ExtractReport", "extract"]


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
    # With --decode device: the images handed to nvJPEG (the others, and any it refused,
    # were decoded by Pillow), and the library that called it.
    device_decoded: int | None = None
    jpeg_decoder: str | None = None
    # The collection, its list of images without a row, and its hidden or system files
    # left out.
    collection: str = ""
    skipped_csv: Path | None = None
    ignored: int = 0


class _Images(Dataset):
    """Item k -> (k, reason, views, jpeg): Pillow's uint8 views (one per geometry), or
    with ``jpeg_bytes`` and a file the device can decode, its bytes instead, unless
    ``balance`` sends image k to Pillow."""

    def __init__(self, paths: list[Path], pres: list, *, jpeg_bytes: bool = False,
                 balance: DecoderBalance | None = None):
        self.paths, self.pres, self.jpeg_bytes, self.balance = paths, pres, jpeg_bytes, balance
        self.min_size = min_decode_size(pres)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        started = time.perf_counter()
        balance = self.balance if self.jpeg_bytes else None
        to_pillow = balance is not None and balance.to_pillow(k)
        if self.jpeg_bytes and not to_pillow:
            data = _read_bytes(self.paths[k])
            if device_decodable(data):
                if balance is not None:
                    balance.worker_cost(DecoderBalance.READ, started)
                return k, "", None, data
        views, reason = decode_views(self.paths[k], self.pres, min_size=self.min_size)
        if to_pillow:
            balance.worker_cost(DecoderBalance.PILLOW, started)
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
        cpu_views = [_stack_views([items[j][2][g] for j in cpu_at]) for g in range(n_views)]
    blobs = [items[j][3] for j in jpeg_at]
    jpeg = (torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8) if blobs
            else torch.empty(0, dtype=torch.uint8))
    ends = np.cumsum([len(b) for b in blobs]).tolist()
    return _Batch(index=torch.tensor([item[0] for item in items]),
                  reasons=[item[1] for item in items], cpu_at=cpu_at, cpu_views=cpu_views,
                  jpeg_at=jpeg_at, jpeg=jpeg, jpeg_ends=ends)


def _stack_views(views: list[torch.Tensor]) -> torch.Tensor:
    """(3, S, S) views -> (B, 3, S, S) with channels-last strides.

    Stacking channels-last is a plain copy per image (channels-first would
    transpose each one); ``default_collate`` stacks straight into shared
    memory in a worker, sparing the copy into it on the way to the main
    process; and channels-last is the layout the trunks want on a GPU.
    """
    return default_collate([v.permute(1, 2, 0) for v in views]).permute(0, 3, 1, 2)


def _device_views(batch: _Batch, pres: list, device: torch.device, paths: list[Path],
                  decoder: str = "auto") -> tuple[list[torch.Tensor], list[str]]:
    """One (B, 3, S, S) uint8 tensor per geometry on ``device``, and the reasons.

    decoder : the library that decodes the batch's JPEG bytes (``jpeg_decoder``).
    """
    reasons = list(batch.reasons)
    if len(batch.cpu_at) == len(reasons):  # everything decoded by Pillow
        return [v.to(device, non_blocking=True) for v in batch.cpu_views], reasons
    decoded = decode_jpegs(batch.jpegs(), device, decoder) if batch.jpeg_at else []
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


def extract(collection: Collection, config: ExtractConfig) -> list[ExtractReport]:
    """Fill the cache for every backbone of ``config``; returns one report per backbone."""
    device = resolve_device(config.device)  # a missing GPU is an error even with nothing to do
    specs = [get_spec(name) for name in config.backbones]
    decoder = _device_decoder(config, specs)
    weights = {s.name: resolve_weights(s, config.weights) for s in specs}
    folder = Path(config.cache_root) / collection.name
    save_metadata(collection, folder)
    files = {}
    for spec in specs:
        attrs = file_attrs(backbone=spec.name, feature_dim=spec.feature_dim,
                           preprocess=spec.preprocess.attrs(), weights=weights[spec.name].attrs(),
                           dtype=config.dtype, collection=collection.name)
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
    for report in reports:
        report.collection = collection.name
        report.skipped_csv, report.ignored = skipped_csv, collection.ignored
    return reports


def _extract_locked(collection, config: ExtractConfig, specs, files: dict, device,
                    decoder: str | None):
    started = time.perf_counter()
    todo = {}
    for spec in specs:
        out = files[spec.name]
        out.check_compatible()
        out.merge()  # parts left by an interrupted run
        done = out.done_ids()
        todo[spec.name] = {i for i in collection.ids if i not in done}
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
    return [_report(spec.name, files[spec.name].path, len(todo[spec.name]), seconds, stream,
                    device_decoded, decoder) for spec in specs]


def _run(collection, pending, specs, files, todo, config: ExtractConfig,
         device: torch.device, decoder: str | None) -> tuple[float | None, int | None]:
    """Decode, forward and write the ``pending`` ids; ``decoder``: the JPEG decoder
    with ``--decode device``, else None.

    Returns when the first batch arrived, and with ``--decode device`` how many
    images the device decoded.
    """
    autocast = autocast_dtype(config.precision, device)
    pres, view_of = shared_views(specs)
    runners = {s.name: TrunkRunner(s, load_trunk(s, config.weights, progress=config.progress), device, autocast) for s in specs}
    paths = [collection.path(i) for i in pending]
    on_device = decoder is not None
    workers = resolve_workers(config.workers, device)
    balance = DecoderBalance(workers) if on_device else None
    loader = DataLoader(_Images(paths, pres, jpeg_bytes=on_device, balance=balance),
                        batch_size=config.batch_size, num_workers=workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda", shuffle=False)
    first_batch_at = None
    # Parts are written by one thread, in order, while the device runs the next
    # batches; at most MAX_QUEUED batches wait (their features sit in pinned memory).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featbank-writer") as writer, \
            tqdm(total=len(pending), unit="img", disable=not config.progress,
                 desc=f"{collection.name}: {', '.join(runners)}") as bar:
        queued: deque[Future] = deque()
        for batch, views, reasons in _batches_on_device(loader, pres, device, paths,
                                                         decode_ahead=on_device, balance=balance,
                                                         decoder=decoder or "auto"):
            first_batch_at = first_batch_at or time.perf_counter()
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
    return first_batch_at, None if balance is None else balance.device_images


def _batches_on_device(loader, pres: list, device: torch.device, paths: list[Path], *,
                       decode_ahead: bool, balance: DecoderBalance | None = None,
                       decoder: str = "auto"
                       ) -> Iterator[tuple[_Batch, list[torch.Tensor], list[str]]]:
    """(batch, its views on ``device``, reasons) for each batch of ``loader``, in order.

    With ``decode_ahead`` (JPEG bytes decoded on the device), a thread decodes
    and resizes the next batch while the caller queues this one's forward
    pass: nvJPEG holds its caller until a batch is decoded, which would
    otherwise keep the host from feeding the GPU in the meantime. On CUDA the
    thread works on a stream of its own, of high priority so that its resizes
    pass ahead of the forward kernels. The thread times the device's share of
    each batch for ``balance``.
    """
    if not decode_ahead:
        for batch in loader:
            yield (batch, *_device_views(batch, pres, device, paths, decoder))
        return
    stream, consumer = None, None
    if device.type == "cuda":
        stream = torch.cuda.Stream(device, priority=-1)
        consumer = torch.cuda.current_stream(device)  # where the caller queues its work

    def prepare(batch: _Batch):
        started = time.perf_counter()
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            views, reasons = _device_views(batch, pres, device, paths, decoder)
        if stream is not None:
            # The decoded images were freed on return, and their memory may go
            # to the next batch, which torchvision's nvJPEG call writes on a
            # stream of its own (TorchCodec's on this one, but an H100's JPEG
            # engines may not wait for it): the resizes reading them must be
            # done before it decodes again.
            stream.synchronize()
            for view in views:  # used on the caller's stream from now on
                view.record_stream(consumer)
        if balance is not None and batch.jpeg_at:
            balance.device_cost(len(batch.jpeg_at), time.perf_counter() - started)
        return batch, views, reasons

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featbank-decode") as thread:
        ahead: deque[Future] = deque()
        for batch in loader:
            ahead.append(thread.submit(prepare, batch))
            if len(ahead) > 1:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


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


def _submit(ids, reasons, pixels, todo, runner: TrunkRunner, out: FeatureWriter) -> Callable[[], None]:
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


def _report(name: str, path: Path, n_new: int, seconds: float, stream_seconds: float | None,
            device_decoded: int | None, decoder: str | None) -> ExtractReport:
    exists = path.is_file()
    return ExtractReport(backbone=name, path=path, n_rows=count_rows(path) if exists else 0,
                         n_new=n_new, n_skipped=len(read_skipped(path)) if exists else 0,
                         seconds=seconds, stream_seconds=stream_seconds,
                         device_decoded=device_decoded,
                         jpeg_decoder=None if device_decoded is None else decoder)
