"""Batch norms folded into the convolutions before them, for a frozen trunk's forward pass.

An eval-mode batch norm is an affine map per channel, so ``bn(conv(x))`` is one
convolution with scaled weights and a shifted bias: folding removes a pass over
every feature map. On a 2-core Xeon with AMX-BF16 (bf16 autocast, channels-last)
``bench/bench_extract.py`` ran ResNet50's forward at 1.24x and Xception's at 1.05x
the images/s of the same trunk unfolded (medians of 3). The sums change at the rounding level,
so a file records whether its rows were made folded (``fold_bn``), and
``--precision fp32`` on a CPU never folds: it keeps the sums of earlier runs.

Folding follows the data flow that ``torch.fx`` traces (torch's own
``fuse``), not the order modules were registered in: a batch norm is folded only
into the convolution whose output it alone reads. A trunk fx cannot trace (one
with data-dependent control flow, such as timm's EfficientNet-Lite0) runs as it is.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse


def fold_batchnorm(trunk: nn.Module) -> nn.Module | None:
    """A copy of eval-mode ``trunk`` with each Conv-BatchNorm pair folded into one
    convolution; None when the trunk has no such pair or cannot be traced (then run
    ``trunk`` itself). ``trunk`` is left as it is."""
    norms = _batch_norms(trunk)
    if trunk.training or not norms:
        return None
    try:
        folded = fuse(trunk)
    except Exception:  # noqa: BLE001 - fx tracing fails in many ways; unfolded is correct
        return None
    if _batch_norms(folded) == norms:
        return None  # traced, but no batch norm followed a convolution of its own
    return folded.requires_grad_(False).eval()


def _batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def can_fold(device: torch.device, precision: str) -> bool:
    """Whether a run with ``--precision`` ``precision`` folds batch norms on ``device``:
    on a CPU, except with ``--precision fp32`` asked for (the sums of earlier runs). Not
    on a GPU: folding has not been measured there."""
    return device.type == "cpu" and precision != "fp32"
