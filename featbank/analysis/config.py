"""The settings of each analysis sub-command, checked when built (no torch imported)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from featbank.analysis.geometry import MIN_INLIERS
from featbank.analysis.pairs import VERIFY
from featbank.core.errors import BadInput, MissingFile
from featbank.core.settings import at_least, check_device_name, check_workers, one_of, runtime
from featbank.data.tasks import SplitSpec
from featbank.heads.registry import linear_heads
from featbank.models.registry import check_names, parse_weights_filter


def _one_backbone(name: str) -> str:
    if not name or name == "all" or "," in name or "+" in name:
        raise BadInput(f"--backbone {name!r}: this analysis takes one backbone")
    check_names([name])
    return name


@dataclass
class RetrieveConfig:
    """Similarity retrieval: test images query the train and validation images (cosine)."""

    backbone: str
    task: str | None = None  # None only with queries
    # imagenet | random | sha256:<prefix> | a weights file; all = the only file there is
    weights: str = "all"
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
        self.weights = parse_weights_filter(self.weights)
        at_least("--k", self.k, 1)
        at_least("--sheet", self.sheet, 0)
        check_device_name(self.device)
        if self.task is None and not self.queries:
            raise BadInput("retrieve needs --task (test images query the rest) or --query IMAGE")


@dataclass
class CkaConfig:
    """Linear CKA between feature files, on the ids they share."""

    features: list[str]
    debiased: bool = False
    cache_root: str = runtime("cache")
    progress: bool = runtime(True)

    def __post_init__(self):
        if len(self.features) < 2:
            raise BadInput("--features needs at least two feature files (a file may be given "
                             "twice)")
        for path in self.features:
            if not os.path.isfile(path):
                raise MissingFile(f"feature file {path} not found")


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
        self.weights = parse_weights_filter(self.weights)
        one_of("--method", self.method, MAP_METHODS)
        at_least("--max-points", self.max_points, 10)
        at_least("--seed", self.seed, 0)


EXPORT_FORMATS = ("npy", "parquet", "hdf5")


@dataclass
class ExportConfig:
    """Features with ids and labels, for other tools."""

    backbone: str
    weights: str = "all"
    format: str = "npy"
    cache_root: str = runtime("cache")

    def __post_init__(self):
        _one_backbone(self.backbone)
        self.weights = parse_weights_filter(self.weights)
        one_of("--format", self.format, EXPORT_FORMATS)


# Cosine similarity at which two images count as near-duplicates by default: chosen on
# bench/bench_duplicates.py (copies of heritage images; docs/analysis.md has its table).
DUPLICATE_THRESHOLD = 0.88


@dataclass(kw_only=True)
class PairsConfig:
    """What finding and confirming near-duplicate pairs takes (duplicates, leaks)."""

    backbone: str
    weights: str = "all"
    threshold: float = DUPLICATE_THRESHOLD
    k: int = 10  # neighbours each image is compared with
    rotations: bool = True  # also query each image turned by 90, 180 and 270 degrees
    verify: str = "auto"  # confirm pairs by local features: auto (with OpenCV), on, off
    min_inliers: int = MIN_INLIERS  # RANSAC inliers a confirmed pair has
    weights_file: str | None = runtime(None)  # the trunk's weights, when the cache lost them
    device: str = runtime("cpu")  # where the turned images run through the trunk
    cache_root: str = runtime("cache")
    progress: bool = runtime(True)

    def __post_init__(self):
        _one_backbone(self.backbone)
        self.weights = parse_weights_filter(self.weights)
        check_pairs(self)
        check_device_name(self.device)


@dataclass(kw_only=True)
class DuplicatesConfig(PairsConfig):
    """Near-duplicate groups of one feature file, or pairs with another collection's."""

    across: str | None = None  # another collection of the cache
    sheet: int = runtime(8)  # groups on the contact sheet

    def __post_init__(self):
        super().__post_init__()
        at_least("--sheet", self.sheet, 0)


def check_pairs(config) -> None:
    """The settings of near-duplicate pairs (duplicates, leaks)."""
    if not 0 < config.threshold <= 1:
        raise BadInput(f"--threshold must be a cosine similarity in (0, 1], "
                       f"not {config.threshold}")
    at_least("--k", config.k, 1)
    one_of("--verify", config.verify, VERIFY)
    at_least("--min-inliers", config.min_inliers, 3)


def _network_weights(option: str, value: str) -> None:
    """imagenet, random, or a path (a weights file or run folder, checked when loaded)."""
    if not value or value == "all":
        raise BadInput(f"{option} {value!r}: name the trunk's weights: imagenet, random, a "
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
        at_least("--seed", self.seed, 0)
        at_least("--batch-size", self.batch_size, 1)
        check_workers(self.workers)
        check_device_name(self.device)


@dataclass(kw_only=True)
class LayersConfig(_TrunkPass):
    """Stage-by-stage weight distance and CKA between two trunks of one architecture."""

    compare: str
    n: int = 500  # collection images (seeded sample)

    def __post_init__(self):
        super().__post_init__()
        _network_weights("--compare", self.compare)
        at_least("--n", self.n, 4)


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
        at_least("--k", self.k, 1)
        at_least("--n", self.n, 0)


SALIENCY_METHODS = ("gradcam", "vbp", "ig")




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
        one_of("--method", self.method, SALIENCY_METHODS)
        if self.run is not None:
            if self.backbone or self.head:
                raise BadInput("saliency takes --run RUN, or --backbone with --task and "
                                 "--head, not both")
            if not os.path.isfile(os.path.join(self.run, "trunk.pth")):
                raise MissingFile(f"--run {self.run}: the folder has no trunk.pth "
                                        "(finetune.py writes it when a run ends)")
        else:
            if not (self.backbone and self.task and self.head):
                raise BadInput("saliency needs --run RUN (a fine-tuning run folder), or "
                                 "--backbone, --task and --head (a stored off-the-shelf head)")
            _one_backbone(self.backbone)
            _network_weights("--weights", self.weights)
            if self.head not in linear_heads():
                raise BadInput(f"--head {self.head!r}: saliency needs a linear head "
                                 f"({', '.join(linear_heads())})")
        at_least("--n", self.n, 1)
        at_least("--steps", self.steps, 2)
        at_least("--seed", self.seed, 0)
        check_device_name(self.device)


# -- what is wrong with a collection --------------------------------------------------

@dataclass(kw_only=True)
class LeaksConfig(PairsConfig):
    """Confirmed near-duplicate pairs whose images fall in two parts of a task's split."""

    task: str
    split: SplitSpec = field(default_factory=SplitSpec)
    sheet: int = runtime(12)  # pairs on the contact sheet

    def __post_init__(self):
        super().__post_init__()
        at_least("--sheet", self.sheet, 0)


@dataclass
class LabelIssuesConfig:
    """Likely cataloguing errors: out-of-fold probabilities of a head, ranked by cleanlab."""

    backbone: str
    task: str
    weights: str = "all"
    head: str = "logreg"
    folds: int = 5  # K-fold over train+val; the test part is scored by a fit on train+val
    split: SplitSpec = field(default_factory=SplitSpec)
    sheet: int = runtime(24)  # images on the contact sheet, the worst first
    cache_root: str = runtime("cache")

    def __post_init__(self):
        _one_backbone(self.backbone)
        self.weights = parse_weights_filter(self.weights)
        from featbank.heads.registry import resolve_heads

        [self.head] = resolve_heads([self.head])
        at_least("--folds", self.folds, 2)
        at_least("--sheet", self.sheet, 0)


@dataclass
class OutliersConfig:
    """Per image: how far it is from its nearest neighbours; and what to annotate first."""

    backbone: str
    weights: str = "all"
    k: int = 10  # neighbours an outlier score averages over
    n: int | None = None  # select: images to pick (None: outliers only)
    labelled: str | None = None  # select: a file of ids already annotated, one a line
    sheet: int = runtime(24)
    cache_root: str = runtime("cache")

    def __post_init__(self):
        _one_backbone(self.backbone)
        self.weights = parse_weights_filter(self.weights)
        at_least("--k", self.k, 1)
        if self.n is not None:
            at_least("--n", self.n, 1)
        if self.labelled is not None and not os.path.isfile(self.labelled):
            raise MissingFile(f"--labelled {self.labelled} not found")
        at_least("--sheet", self.sheet, 0)
