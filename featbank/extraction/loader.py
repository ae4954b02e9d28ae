"""Batches of decoded views for extraction: Pillow in the DataLoader workers, or JPEG bytes
decoded on the device (nvJPEG), one uint8 view per distinct geometry.

:class:`Images` is the workers' dataset; :func:`batches_on_device` yields each batch's
views on the model's device, decoding JPEG bytes a batch ahead in a thread when the
device decodes them.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from featbank.core.hashing import read_stamped
from featbank.data.images import decode_views
from featbank.extraction.devicedecode import (
    DecoderBalance,
    decode_jpegs,
    device_decodable,
    device_index,
    resize_views,
)


class Images(Dataset):
    """Item k -> (k, reason, views, jpeg, stamp): Pillow's uint8 views (one per geometry),
    or with ``jpeg_bytes`` and a file the device can decode, its bytes instead, unless
    ``balance`` sends image k to Pillow; and the stamp (size, mtime, sha256) of the bytes
    read, which the file's row records."""

    def __init__(self, paths: list[Path], pres: list, *, jpeg_bytes: bool = False,
                 balance: DecoderBalance | None = None, wait=None):
        self.paths, self.pres, self.jpeg_bytes, self.balance = paths, pres, jpeg_bytes, balance
        # For images still being fetched (a IIIF collection): path -> "" once the file is
        # there, else why it will not be (featbank.data.iiif_store.WaitFor).
        self.wait = wait

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        started = time.perf_counter()
        balance = self.balance if self.jpeg_bytes else None
        to_pillow = balance is not None and balance.to_pillow(k)
        missing = self.wait(self.paths[k]) if self.wait is not None else ""
        if missing:
            return k, missing, decode_views(b"", self.pres)[0], None, None
        try:
            data, stamp = read_stamped(self.paths[k])
        except OSError:
            data, stamp = None, None  # decode_views says why
        if self.jpeg_bytes and not to_pillow and data and device_decodable(data):
            if balance is not None:
                balance.worker_cost(DecoderBalance.READ, started)
            return k, "", None, data, stamp
        views, reason = decode_views(self.paths[k] if data is None else data, self.pres)
        if to_pillow:
            balance.worker_cost(DecoderBalance.PILLOW, started)
        return k, reason, views, None, stamp


@dataclass
class Batch:
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
    stamps: list = field(default_factory=list)  # of each image, as read (None: unreadable)

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        self.cpu_views = [v.pin_memory() for v in self.cpu_views]
        return self

    def jpegs(self) -> list[torch.Tensor]:
        starts = [0, *self.jpeg_ends[:-1]]
        return [self.jpeg[s:e] for s, e in zip(starts, self.jpeg_ends)]


def collate(items) -> Batch:
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
    return Batch(index=torch.tensor([item[0] for item in items]),
                  reasons=[item[1] for item in items], cpu_at=cpu_at, cpu_views=cpu_views,
                  jpeg_at=jpeg_at, jpeg=jpeg, jpeg_ends=ends,
                  stamps=[item[4] for item in items])


def _stack_views(views: list[torch.Tensor]) -> torch.Tensor:
    """(3, S, S) views -> (B, 3, S, S) with channels-last strides.

    Stacking channels-last is a plain copy per image (channels-first would
    transpose each one); ``default_collate`` stacks straight into shared
    memory in a worker, sparing the copy into it on the way to the main
    process; and channels-last is the layout the trunks want on a GPU.
    """
    return default_collate([v.permute(1, 2, 0) for v in views]).permute(0, 3, 1, 2)


def device_views(batch: Batch, pres: list, device: torch.device, paths: list[Path],
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
            cpu, reasons[j] = decode_views(paths[int(batch.index[j])], pres)
            for view, pixels in zip(views, cpu):
                view[j] = pixels.to(device)
    return views, reasons


def batches_on_device(loader, pres: list, device: torch.device, paths: list[Path], *,
                       decode_ahead: bool, balance: DecoderBalance | None = None,
                       decoder: str = "auto"
                       ) -> Iterator[tuple[Batch, list[torch.Tensor], list[str]]]:
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
            yield (batch, *device_views(batch, pres, device, paths, decoder))
        return
    stream, consumer = None, None
    if device.type == "cuda":
        stream = torch.cuda.Stream(device, priority=-1)
        consumer = torch.cuda.current_stream(device)  # where the caller queues its work

    def prepare(batch: Batch):
        started = time.perf_counter()
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            views, reasons = device_views(batch, pres, device, paths, decoder)
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
