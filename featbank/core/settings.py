"""The settings of each stage, checked when they are built (no torch imported).

Configuration flows one way: command line -> one of these dataclasses -> the
stage, which saves it beside what it made. Every value is checked in
``__post_init__``, whatever there is left to do, so a complete cache never
hides a bad option. A field declared with ``runtime()`` does not change
results (where to write, how many processes, progress bars); every other
field is part of a result's identity (:func:`identity`), so a new option is
part of the identity unless someone decides otherwise.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field

from featbank.models.registry import check_names, parse_selection
from featbank.heads.registry import HeadOptions, resolve_heads
from featbank.data.tasks import SplitSpec


def defaults(config_class) -> dict:
    """Field name -> default value of a config class (for help texts)."""
    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def runtime(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING):
    """A field that does not change results, left out of :func:`identity`."""
    return field(default=default, default_factory=default_factory, metadata={"identity": False})


def identity(config) -> dict:
    """The fields that decide a result (nested dataclasses as dicts, a split as its tag)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("identity", True):
            value = getattr(config, f.name)
            if isinstance(value, SplitSpec):
                value = value.tag
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = value
    return out


def digest(value, length: int = 10) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


def default_workers(device_type: str = "cpu") -> int:
    """Decoding processes when ``--workers`` is not given: one fewer than the cores
    this process may use (the main process feeds the model), at most 8 where the
    model runs on the CPU, which needs the cores too, and at most 32 with a GPU,
    where decoding sets the pace (one worker decodes 350-1,100 img/s, README "GPU")."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8 if device_type == "cpu" else 32, (cores or 2) - 1))


def _workers(value: int | None) -> None:
    if value is not None:  # None: default_workers(device), once the device is known
        _at_least("--workers", value, 0)


def check_device_name(device: str) -> str:
    """auto, cpu, cuda or cuda:N; whether CUDA is there is checked when the stage starts."""
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def _at_least(option: str, value, low) -> None:
    if value is None or value < low:
        raise ValueError(f"{option} must be at least {low}, not {value}")


def _choice(option: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {option} {value!r}; use {', '.join(map(str, choices))}")


def _fraction(option: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{option} must be in (0, 1], not {value}")


@dataclass
class ExtractConfig:
    """The settings of one extraction run (saved beside its output)."""

    backbones: str | list[str] = runtime("all")  # "vgg19,resnet50", "all" or a list
    weights: str = "imagenet"  # imagenet | random | PATH
    cache_root: str = runtime("cache")
    batch_size: int = runtime(32)
    workers: int | None = runtime(None)
    device: str = runtime("auto")
    dtype: str = "float32"
    precision: str = "auto"
    # cpu: Pillow in the DataLoader workers; device: nvJPEG on the GPU for the JPEGs
    # Pillow has no time for (devicedecode.DecoderBalance), the rest by Pillow.
    # auto = cpu for now (see extract._device_decoder).
    decode: str = runtime("auto")
    # With --decode device, the library that calls nvJPEG: auto = torchcodec when it
    # imports, else torchvision (devicedecode.jpeg_decoder).
    jpeg_decoder: str = runtime("auto")
    engine: str = runtime("local")  # local: this machine; ray: Ray Data (extract_ray.py)
    ray_address: str | None = runtime(None)  # None: RAY_ADDRESS, else a local Ray
    ray_actors: int | None = runtime(None)  # trunk actors; None: one per GPU, else one
    progress: bool = runtime(True)

    def __post_init__(self):
        self.backbones = check_names(self.backbones)
        _at_least("--batch-size", self.batch_size, 1)
        _workers(self.workers)
        check_device_name(self.device)
        _choice("--dtype", self.dtype, ("float32", "float16"))
        _choice("--precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _choice("--decode", self.decode, ("auto", "cpu", "device"))
        _choice("--jpeg-decoder", self.jpeg_decoder, ("auto", "torchcodec", "torchvision"))
        if self.jpeg_decoder != "auto" and self.decode != "device":
            raise ValueError("--jpeg-decoder chooses nvJPEG's library for --decode device; "
                             f"it has no use with --decode {self.decode}")
        _choice("--engine", self.engine, ("local", "ray"))
        if self.ray_actors is not None:
            _at_least("--ray-actors", self.ray_actors, 1)
        if self.engine == "ray" and self.decode == "device":
            raise ValueError("--decode device is for --engine local; the Ray engine decodes "
                             "with Pillow in its tasks")


@dataclass
class ClassifyConfig:
    """Which cells to fill (heads x feature files x tasks) and how each is trained."""

    heads: str = runtime("all")
    # "all", or comma-separated sources: a backbone, or files joined "A@W+B@W" (concatenated)
    backbones: str = runtime("all")
    weights: str = runtime("all")  # imagenet | random | sha256:... prefix | all
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

    def __post_init__(self):
        resolve_heads(self.heads)
        parse_selection(self.backbones)
        _at_least("--seed", self.split.seed, 0)
        _fraction("--train-fraction", self.train_fraction)
        _at_least("--jobs", self.jobs, 1)
        _at_least("--repeats", self.repeats, 1)

    def repeated(self) -> list["ClassifyConfig"]:
        """One config per repeat: the split and the heads seeded ``seed + r``."""
        return [dataclasses.replace(config, options=dataclasses.replace(
                    config.options, seed=config.split.seed)) for config in _repeated(self)]

    @property
    def variant(self) -> str:
        """What, besides the head, the feature file and the split, decides a cell's result."""
        settings = {k: v for k, v in identity(self).items() if k != "split"}
        flat = {**settings.pop("options"), **settings}
        return ",".join(f"{k}={v}" for k, v in flat.items())


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
    device: str = runtime("auto")
    workers: int | None = runtime(None)
    cache_root: str = runtime("cache")
    split: SplitSpec = field(default_factory=SplitSpec)
    progress: bool = runtime(True)
    # train on this many splits, seeded seed, seed + 1, ... (each its own run and row)
    repeats: int = runtime(1)

    def __post_init__(self):
        if self.backbone == "all" or "," in self.backbone:
            raise ValueError(f"--backbone {self.backbone!r}: fine-tuning takes one backbone")
        check_names([self.backbone])
        _at_least("--epochs", self.epochs, 1)
        _at_least("--patience", self.patience, 1)
        _at_least("--batch-size", self.batch_size, 1)
        _workers(self.workers)
        _at_least("--seed", self.seed, 0)
        if self.image_size is not None:
            _at_least("--image-size", self.image_size, 32)
        for option, value in (("--lr", self.lr), ("--head-lr", self.head_lr)):
            if value is not None and not value > 0:
                raise ValueError(f"{option} must be positive, not {value}")
        _choice("--optimizer", self.optimizer, ("sgd", "adam", "rmsprop"))
        if not FREEZE_SYNTAX.fullmatch(str(self.freeze).strip()):
            raise ValueError(f"--freeze {self.freeze!r}: use none, trunk, last:N (train the last "
                             "N units, the head counting as one) or K (freeze the first K stages)")
        _fraction("--train-fraction", self.train_fraction)
        _at_least("--repeats", self.repeats, 1)
        check_device_name(self.device)

    def repeated(self) -> list["FinetuneConfig"]:
        """One config per repeat: the split and the training seeded ``seed + r``."""
        return [dataclasses.replace(config, seed=config.split.seed)
                for config in _repeated(self)]


def _repeated(config):
    """``config.repeats`` copies of a config, each with one repeat, splits seeded
    ``seed``, ``seed + 1``, ..."""
    seed = config.split.seed
    return [dataclasses.replace(config, repeats=1,
                                split=dataclasses.replace(config.split, seed=seed + r))
            for r in range(config.repeats)]


# -- analysis (analyze.py) ---------------------------------------------------------------

def _one_backbone(name: str) -> str:
    if not name or name == "all" or "," in name or "+" in name:
        raise ValueError(f"--backbone {name!r}: this analysis takes one backbone")
    check_names([name])
    return name


@dataclass
class RetrieveConfig:
    """Similarity retrieval: test images query the train and validation images (cosine)."""

    backbone: str
    task: str | None = None  # None only with queries
    weights: str = "all"  # imagenet | random | sha256:<prefix>; all = the only file there is
    k: int = 10
    queries: list[str] = field(default_factory=list)  # image files to look up instead
    weights_file: str | None = runtime(None)  # the weights file, when the cache lost its path
    sheet: int = runtime(8)  # queries shown on the contact sheet
    split: SplitSpec = field(default_factory=SplitSpec)
    device: str = runtime("cpu")
    cache_root: str = runtime("cache")
    progress: bool = runtime(True)

    def __post_init__(self):
        _one_backbone(self.backbone)
        _at_least("--k", self.k, 1)
        _at_least("--sheet", self.sheet, 0)
        check_device_name(self.device)
        if self.task is None and not self.queries:
            raise ValueError("retrieve needs --task (test images query the rest) or --query IMAGE")


@dataclass
class CkaConfig:
    """Linear CKA between feature files, on the ids they share."""

    features: list[str]
    debiased: bool = False
    cache_root: str = runtime("cache")
    progress: bool = runtime(True)

    def __post_init__(self):
        if len(self.features) < 2:
            raise ValueError("--features needs at least two feature files (a file may be given "
                             "twice)")
        for path in self.features:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"feature file {path} not found")


MAP_METHODS = ("auto", "umap", "tsne")


@dataclass
class MapConfig:
    """A 2-D map of one feature file, coloured by a task."""

    backbone: str
    task: str
    weights: str = "all"
    method: str = "auto"  # auto: UMAP when umap-learn is installed, else t-SNE
    max_points: int = 5000  # a seeded, class-stratified sample beyond this
    seed: int = 0
    cache_root: str = runtime("cache")
    progress: bool = runtime(True)

    def __post_init__(self):
        _one_backbone(self.backbone)
        _choice("--method", self.method, MAP_METHODS)
        _at_least("--max-points", self.max_points, 10)
        _at_least("--seed", self.seed, 0)


EXPORT_FORMATS = ("npy", "parquet")


@dataclass
class ExportConfig:
    """Features with ids and labels, for other tools."""

    backbone: str
    weights: str = "all"
    format: str = "npy"
    cache_root: str = runtime("cache")

    def __post_init__(self):
        _one_backbone(self.backbone)
        _choice("--format", self.format, EXPORT_FORMATS)


def _network_weights(option: str, value: str) -> None:
    """imagenet, random, or a path (a weights file or run folder, checked when loaded)."""
    if not value or value == "all":
        raise ValueError(f"{option} {value!r}: name the trunk's weights: imagenet, random, a "
                         "weights file or a fine-tuning run folder")


@dataclass(kw_only=True)
class _TrunkPass:
    """What the analyses that run collection images through trunks share (keyword-only)."""

    backbone: str
    weights: str  # imagenet | random | weights file | run folder
    seed: int = 0  # of the image sample
    batch_size: int = runtime(32)
    workers: int | None = runtime(None)
    device: str = runtime("auto")
    cache_root: str = runtime("cache")
    progress: bool = runtime(True)

    def __post_init__(self):
        _one_backbone(self.backbone)
        _network_weights("--weights", self.weights)
        _at_least("--seed", self.seed, 0)
        _at_least("--batch-size", self.batch_size, 1)
        _workers(self.workers)
        check_device_name(self.device)


@dataclass(kw_only=True)
class LayersConfig(_TrunkPass):
    """Stage-by-stage weight distance and CKA between two trunks of one architecture."""

    compare: str
    n: int = 500  # collection images (seeded sample)

    def __post_init__(self):
        super().__post_init__()
        _network_weights("--compare", self.compare)
        _at_least("--n", self.n, 4)


@dataclass(kw_only=True)
class TopImagesConfig(_TrunkPass):
    """The collection images that activate each channel of a stage most."""

    compare: str | None = None
    stage: str = "last"  # last | a number from 1 | a stage name
    k: int = 9
    task: str | None = None  # None: the collection's first task
    n: int = 1000  # images run through the trunk when the feature cache cannot serve (0 = all)

    def __post_init__(self):
        super().__post_init__()
        if self.compare is not None:
            _network_weights("--compare", self.compare)
        _at_least("--k", self.k, 1)
        _at_least("--n", self.n, 0)


SALIENCY_METHODS = ("gradcam", "vbp", "ig")
LINEAR_HEADS = ("softmax", "logreg", "svm")


@dataclass
class SaliencyConfig:
    """Saliency maps of a fine-tuned run, or of a trunk with a stored linear head."""

    method: str = "gradcam"  # gradcam | vbp (VisualBackProp) | ig (integrated gradients)
    run: str | None = None  # a fine-tuning run folder
    backbone: str | None = None  # or: a trunk ...
    weights: str = "imagenet"
    task: str | None = None  # ... with the head classify.py stored for this task
    head: str | None = None
    n: int = 8  # test images (seeded sample) when no images are given
    images: list[str] = field(default_factory=list)
    sanity: bool = False  # Adebayo et al.'s model-randomisation test
    steps: int = 32  # integrated gradients: points on the path
    seed: int = 0
    split: SplitSpec = field(default_factory=SplitSpec)
    device: str = runtime("auto")
    cache_root: str = runtime("cache")
    progress: bool = runtime(True)

    def __post_init__(self):
        _choice("--method", self.method, SALIENCY_METHODS)
        if self.run is not None:
            if self.backbone or self.head:
                raise ValueError("saliency takes --run RUN, or --backbone with --task and "
                                 "--head, not both")
            if not os.path.isfile(os.path.join(self.run, "trunk.pth")):
                raise FileNotFoundError(f"--run {self.run}: the folder has no trunk.pth "
                                        "(finetune.py writes it when a run ends)")
        else:
            if not (self.backbone and self.task and self.head):
                raise ValueError("saliency needs --run RUN (a fine-tuning run folder), or "
                                 "--backbone, --task and --head (a stored off-the-shelf head)")
            _one_backbone(self.backbone)
            _network_weights("--weights", self.weights)
            if self.head not in LINEAR_HEADS:
                raise ValueError(f"--head {self.head!r}: saliency needs a linear head "
                                 f"({', '.join(LINEAR_HEADS)})")
        _at_least("--n", self.n, 1)
        _at_least("--steps", self.steps, 2)
        _at_least("--seed", self.seed, 0)
        check_device_name(self.device)
