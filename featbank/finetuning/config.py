"""The settings of one fine-tuning run, checked when built (no torch imported)."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from featbank.core.errors import BadInput
from featbank.core.settings import (
    at_least,
    check_device_name,
    check_workers,
    fraction,
    one_of,
    runtime,
    seeded_repeats,
)
from featbank.data.tasks import SplitSpec
from featbank.models.registry import check_names, weights_id

OPTIMIZERS = ("sgd", "adam", "rmsprop")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FREEZE_SYNTAX = re.compile(r"none|trunk|last:[1-9]\d*|\d+")


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Defaults: Sabatelli et al. (see featbank.finetuning.train)."""

    backbone: str
    task: str
    init: str = "imagenet"  # imagenet | random (He-uniform) | PATH
    freeze: str = "none"  # none | K | trunk | last:N
    # At most; early stopping usually ends sooner. Not part of the identity: a run
    # started again with more epochs continues where it stopped.
    epochs: int = runtime(100)
    patience: int = 7
    optimizer: str = "sgd"  # sgd (Nesterov) | adam | rmsprop
    lr: float = 1e-3
    head_lr: float | None = None  # None = lr
    batch_size: int = 32
    image_size: int | None = None  # None = the backbone's input size
    augment: bool = False  # random crop + horizontal flip (Cetinic et al.)
    balanced: bool = False  # class-balanced loss
    train_fraction: float = 1.0
    seed: int = 0
    # auto: bf16 autocast on a GPU (fp16 without bf16) and on a CPU with native bf16,
    # channels-last; fp32 on a CPU keeps earlier runs' contiguous layout (models.inference)
    precision: str = "auto"
    device: str = runtime("auto")
    workers: int | None = runtime(None)
    cache_root: str = runtime("cache")
    split: SplitSpec = field(default_factory=SplitSpec)
    # make a fresh split of the task instead of following the saved one (data.saved_splits)
    resplit: bool = runtime(False)
    progress: bool = runtime(True)
    # train on this many splits, seeded seed, seed + 1, ... (each its own run and row)
    repeats: int = runtime(1)

    def __post_init__(self):
        if self.backbone == "all" or "," in self.backbone:
            raise BadInput(f"--backbone {self.backbone!r}: fine-tuning takes one backbone")
        check_names([self.backbone])
        if self.init not in ("imagenet", "random"):
            weights_id(self.init, option="--init")  # a missing file: one line, before torch
        at_least("--epochs", self.epochs, 1)
        at_least("--patience", self.patience, 1)
        at_least("--batch-size", self.batch_size, 1)
        check_workers(self.workers)
        at_least("--seed", self.seed, 0)
        if self.image_size is not None:
            at_least("--image-size", self.image_size, 32)
        for option, value in (("--lr", self.lr), ("--head-lr", self.head_lr)):
            if value is not None and not value > 0:
                raise BadInput(f"{option} must be positive, not {value}")
        one_of("--optimizer", self.optimizer, OPTIMIZERS)
        one_of("--precision", self.precision, PRECISIONS)
        if not FREEZE_SYNTAX.fullmatch(str(self.freeze).strip()):
            raise BadInput(f"--freeze {self.freeze!r}: use none, trunk, last:N (train the last "
                             "N units, the head counting as one) or K (freeze the first K stages)")
        fraction("--train-fraction", self.train_fraction)
        at_least("--repeats", self.repeats, 1)
        check_device_name(self.device)

    def repeated(self) -> list["FinetuneConfig"]:
        """One config per repeat: the split and the training seeded ``seed + r``."""
        return [dataclasses.replace(config, seed=config.split.seed)
                for config in seeded_repeats(self)]
