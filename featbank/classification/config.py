"""Which cells of the off-the-shelf grid to fill, and how each is trained (no torch imported)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from featbank.core.settings import at_least, fraction, identity, one_of, runtime, seeded_repeats
from featbank.data.tasks import SplitSpec
from featbank.heads.registry import HeadOptions, resolve_heads
from featbank.models.registry import parse_selection, parse_weights_filter


CALIBRATIONS = ("temperature", "isotonic", "sigmoid")


@dataclass
class ClassifyConfig:
    """Which cells to fill (heads x feature files x tasks) and how each is trained."""

    heads: str = runtime("all")
    # "all", or comma-separated sources: a backbone, or files joined "A@W+B@W" (concatenated)
    backbones: str = runtime("all")
    # the trunk's layers whose files to train on: final (the trunks' outputs), all, or
    # layer names and numbers (extract.py --layers)
    layers: str = runtime("final")
    # imagenet | random | sha256:... prefix | a weights file | all
    weights: str = runtime("all")
    tasks: str = runtime("all")
    cache_root: str = runtime("cache")
    split: SplitSpec = field(default_factory=SplitSpec)
    options: HeadOptions = field(default_factory=HeadOptions)
    train_fraction: float = 1.0
    jobs: int = runtime(default_factory=lambda: os.cpu_count() or 1)
    force: bool = runtime(False)
    # also average each head's probabilities across the sources (rows with method "ensemble")
    ensemble: bool = runtime(False)
    # run every cell on this many splits, seeded seed, seed + 1, ... (each its own rows)
    repeats: int = runtime(1)
    # make a fresh split of each task instead of following the saved one (data.saved_splits)
    resplit: bool = runtime(False)
    # probabilities recalibrated on the validation part: temperature | isotonic | sigmoid
    calibrate: str | None = None
    # k-shot cells: k training images per class for each k, ``repeats`` seeded draws of
    # them on the one split (classification.cells.few_shot); each cell's k is its own
    shots: tuple[int, ...] = runtime(())
    # a reliability diagram per cell (reports/<cell>_reliability.png)
    reliability: bool = runtime(False)

    def __post_init__(self):
        resolve_heads(self.heads)
        parse_selection(self.backbones)
        self.weights = parse_weights_filter(self.weights)
        at_least("--seed", self.split.seed, 0)
        fraction("--train-fraction", self.train_fraction)
        at_least("--jobs", self.jobs, 1)
        at_least("--repeats", self.repeats, 1)
        if self.calibrate is not None:
            one_of("--calibrate", self.calibrate, CALIBRATIONS)
        self.shots = tuple(sorted(set(int(k) for k in self.shots)))
        for k in self.shots:
            at_least("--shots", k, 1)

    def repeated(self) -> list["ClassifyConfig"]:
        """One config per repeat: the split and the heads seeded ``seed + r`` (with
        ``shots``, the repeats are draws on the one split: this config alone)."""
        if self.shots:
            return [self]
        return [dataclasses.replace(config, options=dataclasses.replace(
                    config.options, seed=config.split.seed)) for config in seeded_repeats(self)]

    @property
    def variant(self) -> str:
        """What, besides the head, the feature file and the split, decides a cell's result."""
        settings = {k: v for k, v in identity(self).items() if k != "split"}
        flat = {**settings.pop("options"), **settings}
        return ",".join(f"{k}={v}" for k, v in flat.items())
