"""JPEG decoding and resizing on the device: the GPU fast path of extraction.

DataLoader workers only read a file's bytes and look at its JPEG header
(``device_decodable``); a batch of such files is decoded in one call to nvJPEG,
which uses the hardware JPEG engines of A100 / H100 GPUs for baseline JPEGs.
Two libraries make that call (``jpeg_decoder``): TorchCodec's
``decode_jpeg(list, device="cuda")``, the maintained one, and torchvision's,
deprecated since torchvision 0.29 in favour of TorchCodec's. ``resize_views``
then gives every image the geometry of its backbone's ``Preprocess`` on the
device, so the spec stays the single source of truth for both paths.

What the device path leaves to the CPU path (decoded by Pillow in the workers,
with the same reasons for failures): non-JPEG files, CMYK / YCCK JPEGs, files
without an end-of-image marker (truncated), EXIF-rotated images (nvJPEG does
not apply the orientation), huge scans (above ``MAX_DEVICE_PIXELS``, where
Pillow's reduced-scale DCT decoding is cheaper) and any file nvJPEG refuses.

Pillow shares the work: nvJPEG alone decoded 8-11.6k img/s of photographs
on an H100, under the 12.5k img/s of ResNet50's forward pass, while workers
that only read bytes have cores to spare. ``DecoderBalance`` sends the share
of JPEGs to Pillow at which both keep the same pace, from costs it measures
during the run.

Differences from the CPU path: the CPU path decodes large JPEGs at 1/2, 1/4 or
1/8 scale first (libjpeg DCT scaling) and resizes with Pillow; the device path
decodes at full size and resizes with ``torch.nn.functional.interpolate``
(antialiased, PIL's filter coefficients). Pixels differ by a few levels and
features by about 1 % (docs/gpu.md).
"""
from __future__ import annotations

import io
import math
import time
import warnings
from collections import defaultdict
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import get_worker_info

from featbank.core.errors import BadInput
from featbank.core.fileio import first_line
from featbank.data.preprocess import Preprocess

JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
# Above this many pixels a JPEG goes to the CPU path: decoding it whole on the
# device costs 3 bytes a pixel, where Pillow's draft mode decodes it at 1/8 scale.
MAX_DEVICE_PIXELS = 36_000_000
_ORIENTATION_TAG = 0x0112
# The share of JPEGs Pillow decodes before any cost is measured (both sides
# then get measured from the first batches), and the most it ever takes: the
# device keeps decoding some, so its rate stays measured.
FIRST_PILLOW_SHARE = 0.1
MAX_PILLOW_SHARE = 0.9
# The balance weighs its costs by recency: a cost measured this many images ago
# counts half. The share then follows a collection whose image sizes change
# along its order, and the first batches' warm-up (nvJPEG's first call, workers
# starting) fades instead of weighing on the whole run.
BALANCE_HALF_LIFE = 4096
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}


def device_decodable(data: bytes) -> bool:
    """Whether nvJPEG can decode ``data`` into the image the CPU path would give."""
    if not data.startswith(JPEG_START) or JPEG_END not in data[-64:]:
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            return (im.format == "JPEG" and im.mode in ("RGB", "L")
                    and im.width * im.height <= MAX_DEVICE_PIXELS
                    and im.getexif().get(_ORIENTATION_TAG, 1) == 1)
    except Exception:  # noqa: BLE001 - any header Pillow cannot read goes to the CPU path
        return False


def device_resizable(pre: Preprocess) -> bool:
    """Whether ``resize_views`` implements this spec's resize policy and filter."""
    return pre.interpolation in _MODES and pre.resize in ("squash", "center_crop")


JpegDecode = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


def _torchcodec() -> JpegDecode:
    from torchcodec.decoders import decode_jpeg

    return lambda encoded, device: decode_jpeg(encoded, mode="RGB", device=device)


def _torchvision() -> JpegDecode:
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(encoded, device):
        with warnings.catch_warnings():  # deprecated since torchvision 0.29
            warnings.simplefilter("ignore")
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    return decode


# The libraries that call nvJPEG for a batch, in the order ``auto`` tries them.
JPEG_DECODERS: dict[str, Callable[[], JpegDecode]] = {"torchcodec": _torchcodec,
                                                       "torchvision": _torchvision}


@lru_cache(maxsize=None)
def jpeg_decoder(name: str = "auto") -> tuple[str, JpegDecode]:
    """(name, decode) of the batched JPEG decoder ``name``; decode(list of 1-D uint8 CPU
    tensors, device) -> (3, H, W) uint8 RGB tensors on ``device``.

    ``auto``: TorchCodec's when it imports (``pip install 'featbank[gpu]'``), else
    torchvision's. A named decoder that does not import is a ValueError that says why.
    """
    if name == "auto":
        for candidate in JPEG_DECODERS:
            try:
                return jpeg_decoder(candidate)
            except ValueError:
                continue
        raise BadInput("no JPEG decoder imports: neither torchcodec nor torchvision.io")
    if name not in JPEG_DECODERS:
        raise BadInput(f"unknown JPEG decoder {name!r}; use auto, "
                         + " or ".join(JPEG_DECODERS))
    try:
        return name, JPEG_DECODERS[name]()
    except (ImportError, OSError, RuntimeError) as err:  # absent, or built for another torch
        hint = " (pip install 'featbank[gpu]')" if name == "torchcodec" else ""
        raise BadInput(f"the {name} JPEG decoder does not import: {first_line(err)}"
                         f"{hint}") from err


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device,
                 decoder: str = "auto") -> list[torch.Tensor | None]:
    """Decode 1-D uint8 CPU tensors of JPEG bytes to (3, H, W) uint8 RGB on ``device``.

    One batched call to ``jpeg_decoder(decoder)``; if it fails, each image is
    tried alone and the ones the decoder refuses come back as ``None`` (the
    caller decodes them on the CPU).
    """
    _, decode = jpeg_decoder(decoder)
    try:
        return list(decode(encoded, device))
    except RuntimeError:
        return [_decode_one(data, device, decode) for data in encoded]


def _decode_one(data: torch.Tensor, device: torch.device, decode: JpegDecode) -> torch.Tensor | None:
    try:
        return decode([data], device)[0]
    except RuntimeError:
        return None


def resize_views(images: list[torch.Tensor], pre: Preprocess) -> torch.Tensor:
    """(3, H_i, W_i) uint8 images on one device -> (B, 3, S, S) uint8 views of ``pre``.

    Images of the same size are resized together, one interpolation per size.
    """
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k, image in enumerate(images):
        by_shape[tuple(image.shape[1:])].append(k)
    views = {shape: _to_uint8(_resize(torch.stack([images[k] for k in members]).float(), pre,
                                      height=shape[0], width=shape[1]))
             for shape, members in by_shape.items()}
    if len(views) == 1:
        return next(iter(views.values()))
    size = pre.input_size
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=images[0].device)
    for shape, members in by_shape.items():
        out[device_index(members, out.device)] = views[shape]
    return out


def device_index(positions: list[int], device: torch.device) -> torch.Tensor:
    """Positions as an index tensor on ``device``, copied without stalling the host.

    (A list index, or ``torch.tensor(..., device=cuda)``, copies from pageable
    memory, and the host then waits for all the work queued on the GPU.)
    """
    index = torch.tensor(positions, dtype=torch.long)
    if device.type == "cuda":
        index = index.pin_memory().to(device, non_blocking=True)
    return index


def _to_uint8(view: torch.Tensor) -> torch.Tensor:
    return view.round_().clamp_(0, 255).to(torch.uint8)


def _resize(batch: torch.Tensor, pre: Preprocess, *, height: int, width: int) -> torch.Tensor:
    """The geometry of ``images.to_view`` on a float batch (B, 3, H, W)."""
    size = pre.input_size
    if pre.resize == "squash":
        return _interpolate(batch, (size, size), pre.interpolation)
    if pre.resize != "center_crop":
        raise BadInput(f"unknown resize policy {pre.resize!r}; use squash or center_crop")
    ratio = math.floor(size / pre.crop_pct) / min(width, height)
    new_w, new_h = max(size, round(width * ratio)), max(size, round(height * ratio))
    resized = _interpolate(batch, (new_h, new_w), pre.interpolation)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[:, :, top:top + size, left:left + size]


def _interpolate(batch: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    mode = _MODES[interpolation]
    if tuple(batch.shape[-2:]) == size:
        return batch
    antialias = mode in ("bilinear", "bicubic")  # PIL's filters widen when shrinking
    return F.interpolate(batch, size=size, mode=mode, antialias=antialias,
                         **({"align_corners": False} if antialias else {}))


class DecoderBalance:
    """Splits the JPEGs the device could decode between Pillow in the workers and the device.

    The workers time what each image costs them: reading its bytes for the
    device (``READ``) or decoding and resizing it with Pillow (``PILLOW``),
    into rows of a shared tensor, one per worker. The decoding thread times
    the device (``device_cost``) and then sets ``share``, the fraction of
    JPEGs for Pillow, to :func:`balanced_share` of the recent costs (each
    weighed by 0.5 ** (images since / ``BALANCE_HALF_LIFE``)). Image k
    goes to Pillow when floor((k + 1) s) > floor(k s), which spreads the
    share evenly over the batches. With no worker processes the share is 0.

    Which decoder an image gets then depends on timing; features from the two
    differ by about as much as ``--decode cpu`` and ``--decode device`` do
    (docs/gpu.md), and ``--decode cpu`` decodes everything with Pillow.
    """

    READ, PILLOW = 0, 1

    def __init__(self, workers: int):
        self.workers = workers
        first = FIRST_PILLOW_SHARE if workers > 0 else 0.0
        self.share = torch.full((), first, dtype=torch.float64).share_memory_()
        # [process (0 = main, w + 1 = worker w), READ | PILLOW, (seconds, images)]
        self.costs = torch.zeros((workers + 1, 2, 2), dtype=torch.float64).share_memory_()
        self.device_images = 0  # decoded by the device so far
        # In the decoding thread: the workers' summed costs at the last re-balance, and
        # the recent costs [READ, PILLOW, device] x (seconds, images), faded by age.
        self._counted = np.zeros((2, 2))
        self._recent = np.zeros((3, 2))
        self._views: tuple[np.ndarray, np.ndarray] | None = None

    def to_pillow(self, k: int) -> bool:
        share = float(self._arrays()[0])
        return math.floor((k + 1) * share) > math.floor(k * share)

    def worker_cost(self, path: int, started: float) -> None:
        """In a worker: one image went down ``path``, begun at ``started`` (perf_counter)."""
        info = get_worker_info()
        cost = self._arrays()[1][0 if info is None else info.id + 1, path]
        cost[0] += time.perf_counter() - started
        cost[1] += 1

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """NumPy views of ``share`` and ``costs``, made once in each process: these
        two run for every image, where tensor indexing cost 16 us an image and
        NumPy 1 us (a worker reads an image's bytes in about 300 us)."""
        if self._views is None:
            self._views = self.share.numpy(), self.costs.numpy()
        return self._views

    def __getstate__(self) -> dict:  # a spawned worker makes views of its own
        return {**self.__dict__, "_views": None}

    def device_cost(self, images: int, seconds: float) -> None:
        """In the decoding thread: the device decoded ``images`` in ``seconds``; re-balance."""
        self.device_images += images
        counted = self._arrays()[1].sum(0)  # the workers' costs so far, [READ, PILLOW]
        fresh = np.vstack([counted - self._counted, [[seconds, images]]])
        self._counted = counted
        fade = 0.5 ** ((fresh[1, 1] + images) / BALANCE_HALF_LIFE)  # images decoded since
        measured = fresh[:, 1] > 0  # a path with no image since keeps its last cost
        self._recent[measured] = self._recent[measured] * fade + fresh[measured]
        seconds, n = self._recent.T  # by path: READ, PILLOW, device
        if self.workers == 0 or (n == 0).any() or seconds[2] <= 0:
            return
        self.share.fill_(balanced_share(self.workers, read=seconds[0] / n[0],
                                        pillow=seconds[1] / n[1], device_rate=n[2] / seconds[2]))


def balanced_share(workers: int, *, read: float, pillow: float, device_rate: float) -> float:
    """The share s of JPEGs for Pillow at which ``workers`` processes, spending ``read``
    seconds on an image for the device and ``pillow`` on one they decode, keep the
    pace of a device decoding the rest at ``device_rate`` img/s:

        workers / (s * pillow + (1 - s) * read) = device_rate / (1 - s)

    clipped to [0, MAX_PILLOW_SHARE]; 0 when the workers cannot even keep up
    with the device by reading bytes alone.
    """
    if pillow <= read:
        return MAX_PILLOW_SHARE
    share = (workers - device_rate * read) / (workers + device_rate * (pillow - read))
    return min(MAX_PILLOW_SHARE, max(0.0, share))
