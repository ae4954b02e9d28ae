"""The settings of an extraction run, checked when built (no torch imported)."""
from __future__ import annotations

from dataclasses import dataclass

from featbank.core.errors import BadInput
from featbank.core.settings import at_least, check_device_name, check_workers, one_of, runtime
from featbank.models.registry import check_names, weights_id

# The choices of each option, offered by the command line and checked here.
DTYPES = ("float32", "float16")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODES = ("auto", "cpu", "device", "device+pillow")
JPEG_DECODERS = ("auto", "torchcodec", "torchvision")
ENGINES = ("local", "ray")
POOLS = ("auto", "cls", "mean", "gap", "model")  # models.layers

@dataclass
class ExtractConfig:
    """The settings of one extraction run (saved beside its output)."""

    backbones: str | list[str] = runtime("all")  # "vgg19,resnet50", "all" or a list
    weights: str = "imagenet"  # imagenet | random | PATH
    cache_root: str = runtime("cache")
    # None: extraction.engine.default_batch_size (small batches on a CPU, whose caches
    # they fit: 8 images of 224 px ran 1.3-2x the images/s of 32 on 2 cores)
    batch_size: int | None = runtime(None)
    workers: int | None = runtime(None)
    device: str = runtime("auto")
    dtype: str = "float32"
    precision: str = "auto"
    # cpu: Pillow in the DataLoader workers; device: nvJPEG on the GPU for the JPEGs it
    # takes, Pillow for the rest; device+pillow: besides, Pillow takes the share of the
    # JPEGs the workers have time for (devicedecode.DecoderBalance), so which decoder
    # made a row follows timing. auto = cpu for now (see engine._device_decoder).
    # Recorded in the file's provenance (``decode``), like the precision.
    decode: str = runtime("auto")
    # With --decode device, the library that calls nvJPEG: auto = torchcodec when it
    # imports, else torchvision (devicedecode.jpeg_decoder).
    jpeg_decoder: str = runtime("auto")
    # The trunk's layers to cache, each in a feature file of its own (models.layers):
    # "final" (the trunk's output), "all", or names and numbers, e.g. "layer3,final".
    layers: str = "final"
    # How a token network's outputs become vectors (models.layers); auto = the model's own.
    pool: str = "auto"
    engine: str = runtime("local")  # local: this machine; ray: Ray Data (ray_engine.py)
    ray_address: str | None = runtime(None)  # None: RAY_ADDRESS, else a local Ray
    ray_actors: int | None = runtime(None)  # trunk actors; None: one per GPU, else one
    progress: bool = runtime(True)
    # A file whose rows were made otherwise (provenance) is set aside in features/replaced/
    # and a new one started, instead of the run being refused.
    force_new: bool = runtime(False)
    # Read every image and compare its sha256 with its row's, not only its size and mtime
    # (extraction.freshness): for changes that keep both.
    verify_images: bool = runtime(False)
    # Rewrite each file's rows into one shard, freeing the space of rows taken out or
    # replaced (store.writer.FeatureWriter.prune).
    prune: bool = runtime(False)
    # Run the trunks through torch.compile (the trunk's output only; its compile time is
    # paid on the first batch): see bench/bench_extract.py for where it pays.
    compile: bool = runtime(False)

    def __post_init__(self):
        self.backbones = check_names(self.backbones)
        weights_id(self.weights)  # a missing weights file: one line, before torch loads
        if self.batch_size is not None:
            at_least("--batch-size", self.batch_size, 1)
        check_workers(self.workers)
        check_device_name(self.device)
        one_of("--dtype", self.dtype, DTYPES)
        one_of("--precision", self.precision, PRECISIONS)
        one_of("--decode", self.decode, DECODES)
        one_of("--jpeg-decoder", self.jpeg_decoder, JPEG_DECODERS)
        if self.jpeg_decoder != "auto" and not self.decode.startswith("device"):
            raise BadInput("--jpeg-decoder chooses nvJPEG's library for --decode device; "
                             f"it has no use with --decode {self.decode}")
        one_of("--pool", self.pool, POOLS)
        if not str(self.layers).strip():
            raise BadInput("--layers needs a layer: final, all, or names and numbers")
        one_of("--engine", self.engine, ENGINES)
        if self.engine == "ray" and (self.layers != "final" or self.pool != "auto"):
            raise BadInput("--layers and --pool are for --engine local; the Ray engine "
                           "caches the trunk's output (final) only")
        if self.ray_actors is not None:
            at_least("--ray-actors", self.ray_actors, 1)
        if self.engine == "ray" and self.decode.startswith("device"):
            raise BadInput("--decode device is for --engine local; the Ray engine decodes "
                             "with Pillow in its tasks")
