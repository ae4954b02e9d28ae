"""Batch norms folded into the convolutions before them, for a frozen trunk's forward pass.

An eval-mode batch norm is an affine map per channel, so ``bn(conv(x))`` is one
convolution with scaled weights and a shifted bias: folding removes a pass over
every feature map. On a 2-core Xeon with AMX-BF16 (bf16 autocast, channels-last)
``bench/bench_extract.py`` ran the forward passes of Xception at 1.20x, ResNet50 at
1.14x and EfficientNet-Lite0 at 1.29x (1.37x in fp32, where its defaults fall back) the
images/s of the same trunk unfolded (medians of 3). The sums change at the rounding level,
so a file records whether its rows were made folded (``fold_bn``), and
``--precision fp32`` on a CPU never folds: it keeps the sums of earlier runs.

Folding follows the data flow that ``torch.fx`` traces (torch's own
``fuse``), not the order modules were registered in: a batch norm is folded only
into the convolution whose output it alone reads. A trunk fx cannot trace (one
with data-dependent control flow, such as timm's EfficientNet-Lite0, whose "same"
padding is computed from the input's size) is folded by its modules instead: one
forward pass of a probe records which convolution's output each batch norm (timm's
``BatchNormAct2d`` too, whose activation stays) takes as its input, and the folded
copy is kept only if its features on the probe are the trunk's in fp32
(``PROBE_TOLERANCE``), which a convolution whose output is read elsewhere too fails.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

# Folding changes fp32 sums at the rounding level (a relative error of 1e-6 to 1e-7 on
# Xception's and Lite0's features); a wrong pair changes them by far more.
PROBE_TOLERANCE = 1e-4


def fold_batchnorm(trunk: nn.Module, size: int = 224) -> nn.Module | None:
    """A copy of eval-mode ``trunk`` with each Conv-BatchNorm pair folded into one
    convolution; None when the trunk has no such pair or none can be folded safely
    (then run ``trunk`` itself). ``trunk`` is left as it is. ``size``: the side of the
    probe images a trunk fx cannot trace is checked on (its input size)."""
    norms = _batch_norms(trunk)
    if trunk.training or not norms:
        return None
    try:
        folded = fuse(trunk)
    except Exception:  # noqa: BLE001 - fx tracing fails in many ways; try the modules
        folded = _fold_modules(trunk, size)
    if folded is None or _batch_norms(folded) == norms:
        return None  # no batch norm followed a convolution of its own
    return folded.requires_grad_(False).eval()


def _batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _fold_modules(trunk: nn.Module, size: int) -> nn.Module | None:
    """Fold the pairs one probe pass shows, in a copy, if it keeps the trunk's features."""
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    folded = copy.deepcopy(trunk)
    try:
        pairs, plain = _pairs(folded, probe)  # the copy's pass before folding: the trunk's
        for conv, norm in pairs:
            _fold_pair(folded, conv, norm)
        with torch.inference_mode():
            fast = folded(probe).float()
    except Exception:  # noqa: BLE001 - a trunk the probe cannot run stays as it is
        return None
    error = ((fast - plain).norm(dim=1) / plain.norm(dim=1).clamp_min(1e-12)).max()
    return folded if pairs and plain.shape == fast.shape and error <= PROBE_TOLERANCE else None


def _pairs(trunk: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """(convolution, batch norm) module names where the batch norm's input is the very
    tensor the convolution returned, each module run once in the probe's forward pass;
    and that pass's output (fp32)."""
    made: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors kept, so ids stay unique
    calls: dict[str, int] = {}
    read: dict[str, str] = {}

    def hook(name: str, module: nn.Module):
        def record(_module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(module, nn.Conv2d):
                made[id(output)] = (name, output)
            elif inputs and id(inputs[0]) in made and made[id(inputs[0])][1] is inputs[0]:
                read[name] = made[id(inputs[0])][0]
        return record
    handles = [m.register_forward_hook(hook(name, m)) for name, m in trunk.named_modules()
               if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        with torch.inference_mode():
            output = trunk(probe).float()
    finally:
        for handle in handles:
            handle.remove()
    return [(conv, norm) for norm, conv in read.items()
            if calls[norm] == calls[conv] == 1 and _foldable(trunk.get_submodule(norm))], output


def _foldable(norm: nn.Module) -> bool:
    """A plain batch norm, or one whose forward is batch norm, dropout, activation
    (timm's BatchNormAct2d), with running statistics to fold."""
    plain = type(norm) is nn.BatchNorm2d
    with_act = (type(norm).__name__ == "BatchNormAct2d" and hasattr(norm, "act")
                and hasattr(norm, "drop"))
    return (plain or with_act) and norm.running_mean is not None


def _fold_pair(trunk: nn.Module, conv_name: str, norm_name: str) -> None:
    conv, norm = trunk.get_submodule(conv_name), trunk.get_submodule(norm_name)
    scale = (norm.weight if norm.affine else torch.ones_like(norm.running_var)) \
        / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter((bias - norm.running_mean) * scale + shift,
                                 requires_grad=False)
    after = nn.Identity() if type(norm) is nn.BatchNorm2d else nn.Sequential(norm.drop, norm.act)
    parent, _, leaf = norm_name.rpartition(".")
    setattr(trunk.get_submodule(parent) if parent else trunk, leaf, after)


def can_fold(device: torch.device, precision: str) -> bool:
    """Whether a run with ``--precision`` ``precision`` folds batch norms on ``device``:
    on a CPU, except with ``--precision fp32`` asked for (the sums of earlier runs). Not
    on a GPU: folding has not been measured there."""
    return device.type == "cpu" and precision != "fp32"
