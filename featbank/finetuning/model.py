"""The network fine-tuning trains: a registry trunk with a new linear head; freezing,
initialisation, loss and optimiser.

Freezing (``freeze``) counts *stages*: the trunk's top-level parameterised
units in forward order (a norm layer joins the unit before it), e.g. ResNet50:
stem, layer1..layer4; SqueezeNet: conv1 and eight fire modules. Cetinic et
al.'s five scenarios are ``none`` (all layers), ``1`` (skip the first), ``2``
(skip the first two), ``last:3`` (only the last three units, the new head
counting as one) and ``last:1`` = ``trunk`` (only the head). Frozen stages
keep batch-norm in eval mode.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from featbank.core.errors import BadInput
from featbank.finetuning.config import FinetuneConfig
from featbank.models.registry import BackboneSpec
from featbank.models.trunks import (
    NORM_LAYERS,
    Weights,
    build_pretrained,
    load_state_dict_file,
    resolve_weights,
    stages,
)


class FineTuneNet(nn.Module):
    """trunk (B, 3, S, S) -> (B, feature_dim) GAP vectors -> head -> (B, n_classes) logits."""

    def __init__(self, trunk: nn.Module, feature_dim: int, n_classes: int):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(feature_dim, n_classes)
        # A zero head: the first steps train the head alone, and the pretrained trunk is
        # not pushed around by a random head's gradients (as in DeiT / MAE fine-tuning).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.frozen: list[nn.Module] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:  # frozen stages keep their batch-norm statistics
            module.eval()
        return self


def frozen_count(freeze: str, n_stages: int) -> int:
    """How many leading stages ``freeze`` freezes (see the module docstring)."""
    text = str(freeze).strip()
    if text == "none":
        return 0
    if text == "trunk":
        return n_stages
    if text.startswith("last:") and text[5:].isdigit() and int(text[5:]) >= 1:
        return max(0, n_stages - (int(text[5:]) - 1))
    if text.isdigit() and int(text) <= n_stages:
        return int(text)
    raise BadInput(f"--freeze {freeze!r}: use none, trunk, last:N (train the last N units, "
                     f"the head counting as one) or K <= {n_stages} (freeze the first K stages)")


def apply_freeze(model: FineTuneNet, freeze: str) -> int:
    """Freeze leading stages: no gradients, batch-norm in eval mode. Returns their number."""
    units = stages(model.trunk)
    k = frozen_count(freeze, len(units))
    model.frozen = [m for unit in units[:k] for m in unit]
    for module in model.frozen:
        module.requires_grad_(False)
    model.train(model.training)
    return k


def he_uniform_(module: nn.Module) -> None:
    """Keras' he_uniform for every conv and linear weight; zero biases; fresh norm layers."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")  # bound sqrt(6 / fan_in)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, NORM_LAYERS) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_weights(spec: BackboneSpec, init: str, seed: int) -> Weights:
    """What ``--init`` means, recorded in the run's row: imagenet and files as for
    extraction; ``random`` is He-uniform seeded with ``seed`` (:func:`he_uniform_`), not
    the library initialisation ``extract.py --weights random`` means, so its id
    (``he-uniform``) and exact weights (``he-uniform:seed<N>``) are its own."""
    if init == "random":
        return Weights("he-uniform", f"he-uniform:seed{seed}")
    return resolve_weights(spec, init, option="--init")


def build_trunk(spec: BackboneSpec, init: str, seed: int, *, progress: bool = True) -> nn.Module:
    """A trainable trunk: ImageNet, He-uniform random, or loaded from a state_dict / checkpoint."""
    if init == "imagenet":
        return build_pretrained(spec, option="--init", progress=progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = spec.build(False)
        if init == "random":
            he_uniform_(trunk)
            return trunk
    load_state_dict_file(trunk, init, spec=spec)
    return trunk


def make_loss(targets, n_classes: int, balanced: bool, multi_label: bool) -> nn.Module:
    """Cross-entropy; for a multi-label task binary cross-entropy on each class's logit
    (independent sigmoids). ``balanced`` weighs classes by inverse frequency, or for
    binary cross-entropy weighs each class's positives by its negatives / positives."""
    if multi_label:
        Y = torch.as_tensor(targets, dtype=torch.float32)
        positives = Y.sum(0)
        pos_weight = (len(Y) - positives) / positives.clamp(min=1) if balanced else None
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    weights = None
    if balanced:  # every class has training images (the split keeps no class without)
        weights = torch.from_numpy(compute_class_weight(
            "balanced", classes=np.arange(n_classes), y=np.asarray(targets)).astype(np.float32))
    return nn.CrossEntropyLoss(weight=weights)


def make_optimizer(model: FineTuneNet, config: FinetuneConfig) -> torch.optim.Optimizer:
    trunk = [p for p in model.trunk.parameters() if p.requires_grad]
    groups = [{"params": model.head.parameters(), "lr": config.head_lr or config.lr}]
    if trunk:
        groups.insert(0, {"params": trunk, "lr": config.lr})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, alpha=0.9, eps=1e-8)
    raise BadInput(f"unknown optimizer {config.optimizer!r}; use sgd, adam or rmsprop")
