"""Bring your own network: any ``torch.nn.Module`` that maps images to feature maps or
vectors, extracted like a registry backbone (``fb.extract(images, backbone=module,
preprocess=...)``).

The module is registered for the session under ``module:<ClassName>`` with its
preprocessing and its measured vector length (a feature map is average-pooled, as
the registry's trunks are). Its weights are identified by the digest of its
state_dict (names, dtypes, shapes and bytes of every tensor) together with its class
name, so its feature file is cached and resumed like any other: the same module with
the same weights finds its rows, changed weights start another file.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from featbank.core.errors import BadInput
from featbank.data.preprocess import Preprocess
from featbank.models.registry import BackboneSpec, register_session

PREFIX = "module:"


def module_digest(module: nn.Module) -> str:
    """``sha256:`` of the module's class name and state_dict, in key order."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for key, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"\0{key}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return "sha256:" + digest.hexdigest()


class _Pooled(nn.Module):
    """The module's output as (B, D): a feature map average-pooled, vectors as they are."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().mean(dim=(2, 3)) if out.ndim == 4 else out.flatten(1)


def preprocess_of(value) -> Preprocess:
    """A :class:`Preprocess` from one, a dict of its fields, or None (ImageNet's 224)."""
    if value is None:
        return Preprocess(input_size=224)
    if isinstance(value, Preprocess):
        return value
    if isinstance(value, dict):
        try:
            return Preprocess(**{k: tuple(v) if k in ("mean", "std") else v
                                 for k, v in value.items()})
        except TypeError as err:
            raise BadInput(f"preprocess {value!r}: {err}") from None
    raise BadInput(f"preprocess must be a featbank Preprocess or a dict of its fields "
                   f"(input_size, mean, std, resize, crop_pct, interpolation), not {value!r}")


@torch.inference_mode()
def register_module(module: nn.Module, preprocess=None) -> tuple[str, str]:
    """Register ``module`` for this session; returns (backbone name, weights id)."""
    if not isinstance(module, nn.Module):
        raise BadInput(f"backbone must be a registry name or a torch.nn.Module, not "
                       f"{type(module).__name__}")
    pre = preprocess_of(preprocess)
    pooled = _Pooled(module).eval()
    try:
        out = pooled(torch.zeros(1, 3, pre.input_size, pre.input_size,
                                 device=next(module.parameters(), torch.zeros(0)).device))
    except Exception as err:  # noqa: BLE001 - the user's network: say what it did
        raise BadInput(f"{type(module).__name__} does not take a (1, 3, {pre.input_size}, "
                       f"{pre.input_size}) image batch: {err}") from None
    if out.ndim != 2:
        raise BadInput(f"{type(module).__name__} gave an output of shape {tuple(out.shape)}; "
                       "a network for features gives (B, C, H, W) maps or (B, D) vectors")
    weights = module_digest(module)
    name = f"{PREFIX}{type(module).__name__}"
    register_session(BackboneSpec(name=name, feature_dim=int(out.shape[1]), preprocess=pre,
                                  build=lambda pretrained: pooled, source="module"),
                     weights=weights)
    return name, weights
