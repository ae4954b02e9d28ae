"""What an extraction run writes: a feature file per backbone and layer.

The default, the trunk's output (``final``) pooled the model's own way, needs
nothing from the trunk before the first batch. Other layers (``--layers``) or
pools (``--pool``) are read off the trunk itself: it is loaded first, its
layers picked (:func:`featbank.models.layers.pick`), each layer's pool resolved
and its vector length measured on a blank image, and the same trunk then runs
the images.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from featbank.extraction.config import ExtractConfig
from featbank.models.layers import FINAL, Layer, layer_dims, pick, resolve_pool
from featbank.models.registry import BackboneSpec
from featbank.models.trunks import load_trunk

DEFAULT = "auto"


@dataclass(frozen=True)
class Target:
    """One feature file of a run: a backbone's layer, its vector length and its pool."""

    spec: BackboneSpec
    layer: Layer
    dim: int
    pool: str  # resolved (models.layers.resolve_pool), as recorded
    named_pool: str = ""  # in the file name: the pool when not the layer's default

    @property
    def key(self) -> tuple[str, str]:
        return self.spec.name, self.layer.name


def plan(spec: BackboneSpec, config: ExtractConfig) -> tuple[list[Target], nn.Module | None]:
    """The targets of ``spec`` for ``config``, and the trunk when it had to be loaded."""
    if config.layers == FINAL and config.pool in (DEFAULT, "model"):
        return [Target(spec, Layer(FINAL, 0), spec.feature_dim, "model")], None
    trunk = load_trunk(spec, config.weights, progress=config.progress)
    chosen = pick(trunk, config.layers, spec.name)
    pools = {layer.name: resolve_pool(trunk, layer, config.pool, spec.name) for layer in chosen}
    defaults = {layer.name: resolve_pool(trunk, layer, DEFAULT, spec.name) for layer in chosen}
    dims = layer_dims(trunk, chosen, spec.preprocess.input_size, pools)
    return [Target(spec, layer, dims[layer.name], pools[layer.name],
                   "" if pools[layer.name] == defaults[layer.name] else pools[layer.name])
            for layer in chosen], trunk
