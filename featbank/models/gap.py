"""The trunk of networks whose ``features`` end in a feature map: that map, average-pooled."""
from __future__ import annotations

import torch
from torch import nn


class GapTrunk(nn.Module):
    """``features`` followed by global average pooling (VGG, AlexNet, SqueezeNet).

    The attribute is named ``features`` so the state_dict keys are torchvision's.
    """

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).float().mean(dim=(2, 3))  # summed in fp32 under bf16 autocast too
