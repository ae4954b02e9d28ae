"""Depths of a trunk whose features can be cached: its stages, and ``final``.

A *layer* is a place in the trunk where features are tapped in the same forward
pass as the trunk's output. The layers are the stages ``finetune.py --freeze``
counts (:func:`featbank.models.trunks.stages`), in forward order; when a trunk
has fewer than four of them (timm's ViTs and EfficientNets keep their blocks in
one container), the largest container is opened into its children (``blocks.0``,
``blocks.1``, ...). ``final`` is the trunk's own output, what a feature file
holds by default.

A layer's output becomes one vector per image: a feature map (B, C, H, W) by
global average pooling (recorded as ``gap``; ``final`` is the trunk's own
pooling, recorded as ``model``); a token network's sequence (B, N, C) by the
``pool`` chosen and recorded: ``cls`` (the class token), ``mean`` (the mean of
the patch tokens), ``gap`` (the mean of every token) or ``model`` (the
network's own pooling: for ``final`` the trunk's output itself, for a block the
token its head reads: the class token, or the patch mean when the network has
none). ``auto`` is ``model``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from featbank.core.errors import BadInput
from featbank.models.trunks import stages
from featbank.store.provenance import FINAL

POOLS = ("auto", "cls", "mean", "gap", "model")


@dataclass(frozen=True, eq=False)
class Layer:
    """A depth of a trunk: its name, its place (1 = nearest the input; ``final`` last)
    and its modules (a unit and the norm layers joined to it; none for ``final``, the
    trunk's output), the last of which it taps."""

    name: str
    index: int
    modules: tuple[nn.Module, ...] = ()

    @property
    def module(self) -> nn.Module | None:
        return self.modules[-1] if self.modules else None

    def parameters(self) -> list[torch.Tensor]:
        return [p for m in self.modules for p in m.parameters()]


def layers(trunk: nn.Module, *, opened: bool = True) -> list[Layer]:
    """Every layer of ``trunk``, from the input to ``final``; ``opened=False`` keeps a
    trunk's blocks in their one container (the units ``finetune.py --freeze`` counts)."""
    names = {id(m): n for n, m in trunk.named_modules()}
    groups = stages(trunk)
    if opened and len(groups) < 4:
        groups = _opened(groups)
    found = [Layer("+".join(names[id(m)] for m in group), k, tuple(group))
             for k, group in enumerate(groups, 1)]
    return found + [Layer(FINAL, len(found) + 1)]


def _opened(groups: list[list[nn.Module]]) -> list[list[nn.Module]]:
    """The largest container among the units, opened into its parameterised children; the
    norm layers grouped after it feed only ``final`` and are left out."""
    def size(group):
        return len([c for c in group[0].children() if next(c.parameters(), None) is not None])
    widest = max(range(len(groups)), key=lambda k: size(groups[k]))
    if size(groups[widest]) < 2:
        return groups
    children = [[c] for c in groups[widest][0].children() if next(c.parameters(), None) is not None]
    return groups[:widest] + children + groups[widest + 1:]


def pick(trunk: nn.Module, wanted: str | list[str], backbone: str = "this trunk") -> list[Layer]:
    """The layers a ``--layers`` value names: ``all``, or names and numbers from 1 (with
    ``final``), in forward order; an unknown one is refused with the list of the known."""
    every = layers(trunk)
    items = [w.strip() for w in (wanted.split(",") if isinstance(wanted, str) else wanted)
             if w.strip()]
    if "all" in items:
        return every
    chosen = []
    for item in items:
        match = [layer for layer in every
                 if item in (layer.name, str(layer.index)) or item in layer.name.split("+")]
        if not match:
            raise BadInput(f"--layers {item!r}: no such layer in {backbone}, which has "
                           f"{', '.join(layer.name for layer in every)} (or all)")
        chosen.append(match[0])
    return sorted({layer.index: layer for layer in chosen}.values(), key=lambda l: l.index)


def is_token_network(trunk: nn.Module) -> bool:
    """A transformer whose layers give token sequences (timm's ViT, DeiT, EVA, ...)."""
    return hasattr(trunk, "num_prefix_tokens") and hasattr(trunk, "forward_features")


def resolve_pool(trunk: nn.Module, layer: Layer, pool: str, backbone: str) -> str:
    """What ``--pool`` means at ``layer`` of ``trunk``, as the feature file records it."""
    if not is_token_network(trunk):
        if pool in ("cls", "mean"):
            raise BadInput(f"--pool {pool} is for token networks (ViT, DeiT, EVA, ...); "
                           f"{backbone} gives feature maps, pooled by their global average "
                           "(use --pool auto)")
        return "model" if layer.name == FINAL else "gap"
    if _before_prefix(trunk, layer):
        return "gap" if pool == "gap" else "mean"  # patches only: no class token yet
    prefix = int(getattr(trunk, "num_prefix_tokens", 0))
    if pool == "cls" and prefix == 0:
        raise BadInput(f"--pool cls: {backbone} has no class token (use mean, gap or model)")
    if pool not in ("auto", "model"):
        return pool
    if layer.name == FINAL:
        return "model"
    return "cls" if prefix and getattr(trunk, "global_pool", "token") == "token" else "mean"


def _before_prefix(trunk: nn.Module, layer: Layer) -> bool:
    """Whether ``layer`` comes before a token network adds its class (prefix) tokens."""
    return layer.module is not None and layer.module is getattr(trunk, "patch_embed", None)


def pooling(output: torch.Tensor, pool: str, prefix_tokens: int = 1) -> torch.Tensor:
    """(B, D) vectors of a layer's output: a feature map's global average, or tokens pooled
    by ``pool`` (a resolved one: :func:`resolve_pool`)."""
    if output.ndim == 4:
        return output.float().mean(dim=(2, 3))
    if output.ndim == 2:
        return output.float()
    if output.ndim != 3:
        raise BadInput(f"cannot pool a layer output of shape {tuple(output.shape)}")
    if pool == "cls":
        return output[:, 0].float()
    if pool == "mean":
        return output[:, prefix_tokens:].float().mean(dim=1)
    return output.float().mean(dim=1)  # gap


class Taps:
    """Forward hooks that keep the pooled outputs of some layers during a forward pass;
    ``pools``: layer name -> its resolved pool."""

    def __init__(self, trunk: nn.Module, chosen: list[Layer], pools: dict[str, str]):
        self.pools, self.out = pools, {}
        prefix = int(getattr(trunk, "num_prefix_tokens", 1))
        self.handles = [layer.module.register_forward_hook(
                            self._keep(layer.name, 0 if _before_prefix(trunk, layer) else prefix))
                        for layer in chosen if layer.module is not None]

    def _keep(self, name: str, prefix: int) -> Callable:
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            # Averaged in fp32 whatever the autocast: under bf16 a mean's result would
            # otherwise be rounded to bf16, coarser than the trunk's own pooled output.
            with torch.autocast(output.device.type, enabled=False):
                self.out[name] = pooling(output, self.pools[name], prefix)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.inference_mode()
def layer_dims(trunk: nn.Module, chosen: list[Layer], input_size: int,
               pools: dict[str, str]) -> dict[str, int]:
    """Layer name -> vector length, from one forward pass of a blank image."""
    taps = Taps(trunk, chosen, pools)
    try:
        device = next(trunk.parameters()).device
        final = final_output(trunk, torch.zeros(1, 3, input_size, input_size, device=device),
                             pools.get(FINAL, "model"))
    finally:
        taps.remove()
    return {**{n: int(v.shape[1]) for n, v in taps.out.items()}, FINAL: int(final.shape[-1])}


def final_output(trunk: nn.Module, x: torch.Tensor, pool: str) -> torch.Tensor:
    """The trunk's output; with a token network and ``pool`` cls, mean or gap, its last
    token sequence (timm's ``forward_features``: after the last norm) pooled so."""
    if pool == "model" or not is_token_network(trunk):
        return trunk(x)
    prefix = int(getattr(trunk, "num_prefix_tokens", 1))
    return pooling(trunk.forward_features(x), pool, prefix)
