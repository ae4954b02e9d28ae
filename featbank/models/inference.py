"""Frozen trunks on a device: device, precision and layout choice, batched forward passes.

Shared by both extraction engines (local and Ray) and by analysis. A
:class:`TrunkRunner` decides autocast on its first batch: bf16 / fp16 only
where the first batch's rows (its first ``CHECK_ROWS``) stay within
``AUTOCAST_TOLERANCE`` of fp32.

The fastest exact-enough forward is the default: ``--precision auto`` is bf16 on a
GPU (fp16 without bf16) and on a CPU with native bf16 (AVX512-BF16 or AMX,
:func:`featbank.core.hardware.native_bf16`), fp32 elsewhere; tensors are
channels-last (NHWC), which oneDNN's and cuDNN's convolutions run fastest, except
for ``--precision fp32`` asked for on a CPU, which keeps the contiguous layout and
so the sums of earlier runs bit for bit. On a CPU such runs also fold batch norms into
their convolutions (:mod:`featbank.models.fold`). On a 2-core Intel Xeon with AMX-BF16,
bf16 with channels-last and batch norms folded ran the forward passes of Xception 5.5x,
ResNet50 4.2x and EfficientNet-Lite0 2.9x the images/s of fp32 contiguous
(``bench/bench_extract.py``, docs/benchmarks.md).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from featbank.core.errors import BadInput
from featbank.core.hardware import native_bf16
from featbank.core.settings import default_workers
from featbank.data.images import normalize
from featbank.models.fold import fold_batchnorm
from featbank.models.layers import FINAL, Layer, Taps, final_output
from featbank.models.registry import BackboneSpec

# --precision auto keeps autocast only when every feature row checked stays
# this close to fp32 (relative L2 error; 3 % is a cosine of 0.9996 and more). Over all
# of heritage/test, bf16 rows of the real ImageNet trunks strayed up to 4.5 % (Xception),
# 2.7 % (SqueezeNet) and 12 % (EfficientNet-Lite0); the check kept the first two and
# sent Lite0 to fp32, and logreg on bf16 SqueezeNet features scored 0.006 below fp32's
# over five splits, within the goal of 0.01 (bench/bench_precision.py).
AUTOCAST_TOLERANCE = 3e-2
# The check is a sample, not a bound (Xception's first batch stays within 3 %): it
# computes this many images of the first batch again in fp32. A whole batch of 8 in fp32
# cost ResNet50 on a 2-core CPU 0.20 s, a sixth of a 160-image run; 4 images, 0.10 s.
CHECK_ROWS = 4


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise BadInput(f"unknown device {device!r}; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def one_thread(_worker: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: decoding processes run one torch thread
    each, so they and the trunk's threads do not oversubscribe the cores."""
    torch.set_num_threads(1)


def resolve_workers(workers: int | None, device: torch.device) -> int:
    """``--workers``, or when not given the default for ``device`` (config.default_workers)."""
    return default_workers(device.type) if workers is None else workers


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``--precision`` means on ``device`` (None: fp32). ``auto`` is
    bf16 (fp16 without bf16) on a GPU and fp32 on a CPU."""
    return AUTOCAST[resolve_precision(precision, device)]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16``: what ``--precision`` means on ``device`` (``auto``:
    bf16 on a GPU that has it, else fp16; bf16 on a CPU with native bf16, else fp32)."""
    if precision == "auto":
        if device.type != "cuda":
            return "bf16" if native_bf16() else "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in AUTOCAST:
        raise BadInput(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    return precision


def resolve_layout(precision: str, device: torch.device) -> str:
    """``channels_last`` (the convolutions' fastest layout) or ``contiguous``: what a run
    with ``--precision`` ``precision`` computes in on ``device``. Only ``--precision fp32``
    on a CPU keeps ``contiguous``: the layout, and so the sums, of earlier runs."""
    return "contiguous" if device.type == "cpu" and precision == "fp32" else "channels_last"


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def tf32_in_use(device: torch.device) -> bool:
    """Whether fp32 convolutions and matmuls may run as TF32 on ``device`` (cuDNN's and
    cuBLAS's switches; on a CPU, never)."""
    return device.type == "cuda" and bool(torch.backends.cudnn.allow_tf32
                                          or torch.backends.cuda.matmul.allow_tf32)


def training_autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision for training: ``precision`` as :func:`resolve_precision` reads it
    (on a GPU bf16 where supported, else fp16; on a CPU bf16 where native), off for fp32."""
    chosen = resolve_precision(precision, device)
    return torch.autocast(device.type, dtype=AUTOCAST[chosen] or torch.float32,
                          enabled=chosen != "fp32")


class TrunkRunner:
    """One frozen trunk on its device, with the autocast decision made on its first batch.

    ``check``: compare the first batch's autocast features with fp32; past
    ``AUTOCAST_TOLERANCE`` (relative L2 error of a row), ``past_tolerance`` says what
    happens: ``fp32`` falls back to fp32 (``--precision auto``), ``keep`` keeps the
    precision asked for and says by how much it strays, ``refuse`` stops (where the
    precision is already recorded, e.g. by the Ray driver).
    :attr:`precision` says what the rows were made with.
    """

    def __init__(self, spec: BackboneSpec, trunk: torch.nn.Module, device: torch.device,
                 autocast: torch.dtype | None, *, check: bool = True,
                 past_tolerance: str = "fp32",
                 layers: list[Layer] | None = None, pools: dict[str, str] | None = None,
                 layout: str | None = None, compile: bool = False, fold: bool = False):
        """layout : ``channels_last`` or ``contiguous`` (default: channels-last on a GPU,
        contiguous on a CPU); compile : run the trunk through ``torch.compile``; fold :
        fold its batch norms into its convolutions (:mod:`featbank.models.fold`) where it
        can be traced and nothing is tapped; :attr:`folded` says whether it was."""
        self.spec, self.device, self.autocast = spec, device, autocast
        self.layout = layout or ("channels_last" if device.type == "cuda" else "contiguous")
        self.pools = pools or {}
        folded = (fold_batchnorm(trunk, spec.preprocess.input_size) if fold and not layers
                  and self.pools.get(FINAL, "model") == "model" else None)
        self.folded = folded is not None
        trunk = trunk if folded is None else folded
        self.trunk = trunk.to(device).to(memory_format=MEMORY_FORMATS[self.layout])
        self.compiled = None
        if compile:
            if layers:
                raise BadInput("--compile runs the trunk's output only; extract --layers "
                               "without it")
            self.compiled = torch.compile(self.trunk)
        self.checked = autocast is None or not check
        self.past_tolerance = past_tolerance
        self.check_error: float | None = None  # the first batch's, when checked
        # Layers tapped in the same forward pass (models.layers): each batch gives a
        # vector per image and layer; ``pools`` (layer -> resolved pool) says how a token
        # network's outputs become vectors.
        self.taps = Taps(self.trunk, layers, self.pools) if layers else None

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what this runner's features are computed in."""
        return next(name for name, dtype in AUTOCAST.items() if dtype == self.autocast)

    def submit(self, pixels: torch.Tensor) -> Callable[[], np.ndarray]:
        """Queue the forward pass of uint8 (B, 3, S, S) pixels; call the result for (B, D).

        On a GPU the features are copied to pinned memory without waiting, so
        the host prepares the next batch while this one runs.
        """
        result = self.submit_layers(pixels)
        return lambda: result()[FINAL]

    @torch.inference_mode()
    def submit_layers(self, pixels: torch.Tensor) -> Callable[[], dict[str, np.ndarray]]:
        """As :meth:`submit`, for every tapped layer and ``final``: layer -> (B, D_layer)."""
        # The layout is set on the uint8 pixels, a quarter of the bytes of the floats.
        layout = MEMORY_FORMATS[self.layout]
        pixels = pixels.to(self.device, non_blocking=True).contiguous(memory_format=layout)
        x = normalize(pixels, self.spec.preprocess).contiguous(memory_format=layout)
        first = None if self.checked else self._check_autocast(x)
        if first is not None and self.taps is None and self.compiled is None:
            out = {FINAL: first}  # the check computed this batch in the precision kept
        else:
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                out = {FINAL: self._final(x).float(), **(self.taps.out if self.taps else {})}
        if out[FINAL].shape[0] != x.shape[0] or out[FINAL].ndim != 2:
            raise AssertionError(f"{self.spec.name} gave {tuple(out[FINAL].shape)}, "
                                 "expected (B, D)")
        if self.device.type != "cuda":
            arrays = {name: value.numpy() for name, value in out.items()}
            return lambda: arrays
        hosts = {name: torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                 for name, value in out.items()}
        for name, value in out.items():
            hosts[name].copy_(value, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()

        def result() -> dict[str, np.ndarray]:
            copied.synchronize()
            return {name: host.numpy() for name, host in hosts.items()}
        return result

    def _final(self, x: torch.Tensor, *, eager: bool = False) -> torch.Tensor:
        trunk = self.trunk if eager or self.compiled is None else self.compiled
        return final_output(trunk, x, self.pools.get(FINAL, "model"))

    def _check_autocast(self, x: torch.Tensor) -> torch.Tensor:
        """Settle the autocast on the first batch ``x`` (its first ``CHECK_ROWS`` images
        again in fp32); returns the batch's features in the precision kept."""
        with torch.autocast(self.device.type, dtype=self.autocast):
            fast = self._final(x, eager=True).float()
        reference = self._final(x[:CHECK_ROWS], eager=True).float()
        error = float(((fast[:CHECK_ROWS] - reference).norm(dim=1)
                       / reference.norm(dim=1).clamp_min(1e-12)).max())
        self.check_error, self.checked = error, True
        if error <= AUTOCAST_TOLERANCE:
            return fast
        said = (f"{self.spec.name}: {self.precision} features differ from fp32 by "
                f"{error:.2e} (> {AUTOCAST_TOLERANCE})")
        if self.past_tolerance == "refuse":
            raise BadInput(f"{said}; use --precision fp32")
        if self.past_tolerance == "keep":
            tqdm.write(f"{said}; kept, as --precision asked")
            return fast
        tqdm.write(f"{said}; using fp32")
        self.autocast = None
        return reference if len(reference) == len(x) else self._final(x, eager=True).float()


def shared_views(specs) -> tuple[list, dict[str, int]]:
    """One preprocessing per distinct geometry, and which of them each backbone reads."""
    geometries = list(dict.fromkeys(s.preprocess.geometry() for s in specs))
    pres = [next(s.preprocess for s in specs if s.preprocess.geometry() == g) for g in geometries]
    return pres, {s.name: geometries.index(s.preprocess.geometry()) for s in specs}


def backbone_share(ids: list[str], reasons: list[str],
                   todo: set[str]) -> tuple[list[int], list[int], dict[str, str]]:
    """Batch positions a backbone still needs, those of them decoded, and why the rest were not."""
    need = [j for j, i in enumerate(ids) if i in todo]
    good = [j for j in need if not reasons[j]]
    return need, good, {ids[j]: reasons[j] for j in need if reasons[j]}


def add_share(out, ids: list[str], reasons: list[str], stamps: list, need: list[int],
              good: list[int], rows: np.ndarray) -> None:
    """Write a backbone's share of a batch (:func:`backbone_share`) as a part of the feature
    file ``out``: ``rows`` of the ``good`` positions with their images' stamps, and the
    others of ``need`` as skipped, with their reasons and stamps."""
    if not need:
        return
    lost = [j for j in need if reasons[j]]
    out.add_batch([ids[j] for j in good], rows, {ids[j]: reasons[j] for j in lost},
                  stamps=[stamps[j] for j in good],
                  skipped_stamps={ids[j]: stamps[j] for j in lost if stamps[j] is not None})
