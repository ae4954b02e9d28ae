"""How an image becomes a network's input: size, resize policy, interpolation, mean and std.

A :class:`Preprocess` travels with each backbone of the registry (and with
each fine-tuned trunk), so no script hard-codes 224 or ImageNet statistics.
Torch-free: the command lines read it, and :mod:`featbank.data.images` applies it.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the backbone's input tensor.

    ``resize="squash"`` resizes the whole image to ``input_size`` square
    (Sabatelli et al.'s Keras ``target_size``: nothing of the artwork is
    cropped away); ``resize="center_crop"`` resizes the shorter side to
    ``input_size / crop_pct`` and crops the centre (the timm convention).
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "squash"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def geometry(self) -> tuple:
        """What decides the uint8 pixels; backbones sharing it share one decoded view."""
        return (self.input_size, self.resize, self.crop_pct, self.interpolation)

    def attrs(self) -> dict:
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize, "crop_pct": self.crop_pct,
                "interpolation": self.interpolation}
