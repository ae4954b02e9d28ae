"""How an extraction run computes its rows: precision and memory format (settled with the
files it adds to), batch size, the JPEG decoder, and each backbone's trunk runner,
which the run announces.

``--precision auto`` continues a file in the precision and memory format it
records, and a backbone's new layer files follow its existing ones; otherwise it
means the fastest exact-enough forward of the device
(:mod:`featbank.models.inference`).
"""
from __future__ import annotations

import sys
import time

import torch
from tqdm import tqdm

from featbank.core.errors import BadInput
from featbank.core.text import count
from featbank.extraction.config import ExtractConfig
from featbank.extraction.devicedecode import device_resizable, jpeg_decoder
from featbank.extraction.targets import Target
from featbank.models.inference import (
    AUTOCAST,
    AUTOCAST_TOLERANCE,
    TrunkRunner,
    resolve_workers,
    shared_views,
)
from featbank.models.layers import FINAL
from featbank.models.trunks import load_trunk
from featbank.store.provenance import recorded
from featbank.store.writer import FeatureWriter


def settle_provenance(out: FeatureWriter, config: ExtractConfig) -> None:
    """Make sure this run adds rows made as the file's were, or starts a new file.

    ``--precision auto`` continues a file in the precision it records; any other
    difference is refused in one line (``check_compatible``), or with ``force_new``
    the old file is set aside (kept in ``features/replaced/``) for a new one.
    """
    stored = [attrs for _, attrs in out.stored_attrs()]
    if config.precision == "auto" and stored:  # the file's precision, and how it computes
        for key in FOLLOWED:
            out.attrs[key] = recorded(stored[0], key)
    if config.force_new:
        try:
            out.check_compatible()
        except BadInput:
            where = out.set_aside()
            tqdm.write(f"{out.path.name}: its rows were made otherwise; kept in {where}, "
                       "starting a new file (--force-new)")
    out.check_compatible()


# What a run with --precision auto takes from the file it adds to, so that its rows are
# computed as the file's were.
FOLLOWED = ("precision", "memory_format", "fold_bn")


def default_batch_size(device: torch.device, pres: list) -> int:
    """Images per forward pass when ``--batch-size`` is not given: 32 on a GPU; on a CPU as
    many as 8 images of 224 px make (4 of Xception's 299 px), since batches that fit
    the caches run fastest there: on a 2-core EPYC, 8 ran 1.3-2x the images/s of 32."""
    if device.type == "cuda":
        return 32
    largest = max(p.input_size for p in pres)
    return max(1, round(8 * (224 / largest) ** 2))


def one_precision_per_backbone(files: dict, config: ExtractConfig) -> None:
    """With ``--precision auto``, a backbone's new layer files take the precision its files
    with rows record (one forward pass fills them all): a trunk's output extracted in fp32
    and every layer added later are computed alike."""
    if config.precision != "auto":
        return
    made: dict[str, set] = {}
    for (backbone, _), out in files.items():
        for _, attrs in out.stored_attrs():
            made.setdefault(backbone, set()).add(tuple(recorded(attrs, k) for k in FOLLOWED))
    for (backbone, _), out in files.items():
        if len(made.get(backbone, ())) == 1 and not out.stored_attrs():
            out.attrs.update(zip(FOLLOWED, next(iter(made[backbone]))))


def decode_mode(config: ExtractConfig, decoder: str | None) -> str:
    """How rows are decoded, as the file's provenance records it."""
    if decoder is None:
        return "pillow"
    return f"{'nvjpeg+pillow' if config.decode == 'device+pillow' else 'nvjpeg'}:{decoder}"


def device_decoder(config: ExtractConfig, specs: list) -> str | None:
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


def trunk_runner(spec, targets: list[Target], outs: dict, todo: dict, config: ExtractConfig,
            device, trunk) -> TrunkRunner:
    """The backbone's trunk in its files' precision and layout, tapping the layers still to
    fill. Only
    when no file has rows yet is autocast checked against fp32 (and falls back to fp32):
    rows already made settled it."""
    precisions = {out.attrs["precision"] for out in outs.values()}
    if len(precisions) > 1:
        raise BadInput(f"the files of {spec.name}'s layers record precisions "
                       f"{', '.join(sorted(precisions))}; extract them in separate runs")
    trunk = trunk if trunk is not None else load_trunk(spec, config.weights,
                                                       progress=config.progress)
    tapped = [t.layer for t in targets if t.layer.name != FINAL and todo[t.key]]
    check = not any(out.stored_attrs() for out in outs.values())
    precision = precisions.pop()
    first = next(iter(outs.values())).attrs  # layout and folding: settled with the precision
    layout = first["memory_format"]
    started = time.perf_counter()
    runner = TrunkRunner(spec, trunk, device, AUTOCAST[precision], check=check,
                         past_tolerance="fp32" if config.precision == "auto" else "keep",
                         layers=tapped, pools={t.layer.name: t.pool for t in targets},
                         layout=layout, compile=config.compile,
                         fold=bool(recorded(first, "fold_bn")))
    for out in outs.values():
        if not out.stored_attrs():  # what the rows are made with, not what was hoped for
            out.attrs["fold_bn"] = runner.folded
    why = _why(config.precision, precision, check, device)
    tqdm.write(f"{spec.name} on {device.type}: {precision}" + (f" ({why})" if why else "")
               + f", {layout.replace('_', '-')}, "
               + ("batch norms folded, " if runner.folded else "")
               + f"{torch.get_num_threads()} threads, "
               f"{count(resolve_workers(config.workers, device), 'decoding worker')}, "
               + (f"compiled ({time.perf_counter() - started:.1f} s to set up; the first "
                  "batch compiles)" if config.compile else "not compiled"), file=sys.stderr)
    return runner


def _why(asked: str, precision: str, check: bool, device) -> str:
    """Why a run computes in ``precision``, in words, for the line it starts with."""
    if not check:
        return "as the file records"
    if asked == precision:
        return "asked for"
    if precision != "fp32":
        return (f"checked against fp32 on the first batch: kept within {AUTOCAST_TOLERANCE:.0%}"
                " relative error, else fp32")
    return "no native bf16 on this CPU" if device.type == "cpu" else ""
