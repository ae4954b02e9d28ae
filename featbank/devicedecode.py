"""JPEG decoding and resizing on the device: the GPU fast path of extraction.

DataLoader workers only read a file's bytes and look at its JPEG header
(``device_decodable``); a batch of such files is decoded in one call to nvJPEG
through ``torchvision.io.decode_jpeg(list, device="cuda")``, which uses the
hardware JPEG engines of A100 / H100 GPUs for baseline JPEGs. ``resize_views``
then gives every image the geometry of its backbone's ``Preprocess`` on the
device, so the spec stays the single source of truth for both paths.

What the device path leaves to the CPU path (decoded by Pillow in the workers,
with the same reasons for failures): non-JPEG files, CMYK / YCCK JPEGs, files
without an end-of-image marker (truncated), EXIF-rotated images (nvJPEG does
not apply the orientation), huge scans (above ``MAX_DEVICE_PIXELS``, where
Pillow's reduced-scale DCT decoding is cheaper) and any file nvJPEG refuses.

Differences from the CPU path: the CPU path decodes large JPEGs at 1/2, 1/4 or
1/8 scale first (libjpeg DCT scaling) and resizes with Pillow; the device path
decodes at full size and resizes with ``torch.nn.functional.interpolate``
(antialiased, PIL's filter coefficients). Pixels differ by a few levels and
features by about 1 % (README, "GPU fast path").
"""
from __future__ import annotations

import io
import math
import warnings
from collections import defaultdict

import torch
import torch.nn.functional as F
from PIL import Image

from .backbones import Preprocess

JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
# Above this many pixels a JPEG goes to the CPU path: decoding it whole on the
# device costs 3 bytes a pixel, where Pillow's draft mode decodes it at 1/8 scale.
MAX_DEVICE_PIXELS = 36_000_000
_ORIENTATION_TAG = 0x0112
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


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode 1-D uint8 CPU tensors of JPEG bytes to (3, H, W) uint8 RGB on ``device``.

    One batched call; if it fails, each image is tried alone and the ones the
    decoder refuses come back as ``None`` (the caller decodes them on the CPU).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision >= 0.29 marks its decoders deprecated
        warnings.simplefilter("ignore")
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            return [_decode_one(data, device, decode_jpeg, ImageReadMode.RGB) for data in encoded]


def _decode_one(data, device, decode_jpeg, mode) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=mode, device=device)
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
        raise ValueError(f"unknown resize policy {pre.resize!r}; use squash or center_crop")
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
