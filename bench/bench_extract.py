"""Extraction throughput against the fastest forward pass this machine can do, on real images.

    .venv/bin/python bench/bench_extract.py [--images DIR] [--n 160] [--repeats 3]
        [--backbones xception,resnet50,timm:tf_efficientnet_lite0,squeezenet1_1]
        [--weights xception=PATH ...] [--batch-sizes 16,32] [--compile] [--layers all|none]

For each backbone:

1. **The forward pass alone**, over ready-made normalised tensors, in each way
   the machine offers: fp32 with the contiguous layout (featbank's CPU path
   before this bench's change: the baseline), fp32 channels-last, and where
   the CPU has native bf16 (or on a GPU) bf16 autocast in both layouts; on a
   CPU each channels-last one with the trunk's batch norms folded into its
   convolutions too (where it folds: ``featbank.models.fold``); with
   ``--compile`` each of them through ``torch.compile`` too (its compile time
   reported apart). Each variant runs at its best batch size of
   ``--batch-sizes`` (one timed pass per size picks it). The fastest median is
   "the fastest forward".
2. **featbank's extraction** of ``--n`` real images into a fresh cache with its
   defaults (``--precision auto``: what featbank chooses on this machine), and
   with ``--precision fp32`` (the path before), timed from the first decoded
   batch to the committed file.
3. Ratios, repeat by repeat: default extraction / fastest forward (1.0 means at
   the limit: decoding and writing cost nothing the model does not wait for),
   default extraction / fp32 contiguous forward (the speed-up over the path
   before), and with ``--layers all`` the time of caching every layer over the
   trunk's output alone.
   Also default extraction / the fastest forward in the precision the defaults
   kept (a trunk whose bf16 features stray past the check falls back to fp32).
4. The largest relative L2 error of the default precision's features against
   fp32's, over the images.
5. featbank's decoding and resizing alone (``decode_views``) in one process:
   on a CPU with few cores its cost per image is what a fast trunk's
   extraction cannot hide.

Median and min-max of ``--repeats`` runs after a warm-up, the repeats of a
backbone's figures interleaved; written to bench/results/bench_extract.json.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import Bench

from featbank.core.hardware import native_bf16
from featbank.core.settings import default_workers
from featbank.data.collection import Collection, from_folder
from featbank.data.images import decode_views
from featbank.extraction.engine import ExtractConfig, extract
from featbank.models.fold import fold_batchnorm
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk
from featbank.store.features import read_features

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/heritage/test"
BACKBONES = "xception,resnet50,timm:tf_efficientnet_lite0,squeezenet1_1"
LAYOUTS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}


def variants(device: torch.device, compiled: bool) -> list[tuple[str, str, bool, bool]]:
    """(precision, layout, compiled, folded) of every forward the machine offers."""
    precisions = ["fp32"] + (["bf16"] if device.type == "cuda" or native_bf16() else [])
    folds = [False, True] if device.type == "cpu" else [False]
    return [(p, layout, c, f) for c in ([False, True] if compiled else [False])
            for p in precisions for layout in LAYOUTS for f in folds
            if not f or layout == "channels-last"]


def label(precision: str, layout: str, compiled: bool, folded: bool) -> str:
    return (f"{precision} {layout}" + (", batch norms folded" if folded else "")
            + (", compiled" if compiled else ""))


class Forward:
    """The trunk alone in one precision, layout and compilation, over ready-made inputs."""

    def __init__(self, trunk, size: int, precision: str, layout: str, compiled: bool,
                 device: torch.device):
        self.trunk = trunk.to(device).to(memory_format=LAYOUTS[layout])
        self.device, self.size, self.layout = device, size, layout
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.run = torch.compile(self.trunk) if compiled else self.trunk
        self.compile_seconds = None
        if compiled:
            start = time.perf_counter()
            self.rate(4, 2)
            self.compile_seconds = time.perf_counter() - start

    @torch.inference_mode()
    def rate(self, n: int, batch_size: int) -> float:
        """img/s over ``n`` inputs in batches of ``batch_size``."""
        x = torch.randn(batch_size, 3, self.size, self.size, device=self.device)
        x = x.contiguous(memory_format=LAYOUTS[self.layout])
        sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            for b in sizes:
                self.run(x[:b])
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - start)


def best_batch(forward: Forward, n: int, sizes: list[int]) -> int:
    """The batch size of ``sizes`` at which ``forward`` runs fastest (a pass each, warmed)."""
    forward.rate(min(n, max(sizes)), max(sizes))
    return max(sizes, key=lambda b: forward.rate(n, b))


def extraction(name: str, collection: Collection, workers: int, weights: str, **settings):
    """(img/s from the first batch to the committed file, the features)."""
    with tempfile.TemporaryDirectory() as cache:
        config = ExtractConfig(backbones=name, weights=weights, cache_root=cache,
                               workers=workers, progress=False, **settings)
        reports = extract(collection, config)
        assert all(r.n_rows == len(collection) for r in reports)
        data = read_features(reports[0].path)
    return len(collection) / reports[0].stream_seconds, data


def sample(images: str, n: int) -> Collection:
    full = from_folder(images, name="bench")
    step = max(1, len(full) // n)
    keep = full.ids[::step][:n]
    return Collection(name="bench", root=full.root, ids=keep,
                      labels={t: [full.labels[t][full.ids.index(i)] for i in keep]
                              for t in full.tasks})


def relative_error(a, b) -> float:
    rows = {i: k for k, i in enumerate(b.ids)}
    B = b.X[[rows[i] for i in a.ids]].astype(np.float64)
    return float((np.linalg.norm(a.X - B, axis=1) / np.linalg.norm(B, axis=1)).max())


def bench_backbone(bench: Bench, name: str, collection: Collection, args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    weights = args.weights.get(name, "random")
    spec = get_spec(name)
    size = spec.preprocess.input_size
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    runs, chosen = {}, {}
    for precision, layout, compiled, folded in variants(device, args.compile):
        trunk = load_trunk(spec, weights)
        trunk = fold_batchnorm(trunk, size) if folded else trunk
        if trunk is None:
            continue  # nothing folds in this trunk: the unfolded variant is the same
        forward = Forward(trunk, size, precision, layout, compiled, device)
        key = label(precision, layout, compiled, folded)
        if forward.compile_seconds is not None:
            bench.record(f"{name}: {key}, compile time", [forward.compile_seconds], unit="s")
        chosen[key] = best_batch(forward, len(collection), sizes)
        runs[f"{name}: forward {key}, batch {chosen[key]}"] = (
            lambda f=forward, b=chosen[key]: f.rate(len(collection), b), "img/s")
    features = {}

    def extracted(kind: str, **settings):
        def run() -> float:
            rate, features[kind] = extraction(name, collection, args.workers, weights,
                                              batch_size=args.extract_batch_size, **settings)
            return rate
        return run
    default, before = f"{name}: extract, defaults", f"{name}: extract, --precision fp32"
    runs[default] = (extracted("default"), "img/s")
    runs[before] = (extracted("fp32", precision="fp32"), "img/s")
    if args.layers == "all":
        runs[f"{name}: extract --layers all, defaults"] = (
            extracted("layers", layers="all"), "img/s")
    paths = [collection.path(i) for i in collection.ids]
    runs[f"{name}: decoding alone, one process"] = (lambda: decoding(paths, spec), "img/s")
    figures = bench.interleave(runs)
    made = features["default"].provenance
    record_ratios(bench, name, figures, made["precision"], args.layers == "all")
    bench.record(f"{name}: default precision ({made['precision']}"
                 + (", batch norms folded" if made.get("fold_bn") else "")
                 + ") features, largest relative error against fp32",
                 [relative_error(features["default"], features["fp32"])], unit="")


def decoding(paths: list, spec) -> float:
    """img/s of featbank's decoding and resizing alone (decode_views), in this process."""
    start = time.perf_counter()
    for path in paths:
        decode_views(path, [spec.preprocess])
    return len(paths) / (time.perf_counter() - start)


def record_ratios(bench: Bench, name: str, figures: dict, kept: str, layers: bool) -> None:
    """The fastest forward, and extraction's ratios to it, to the fastest forward in the
    precision the defaults kept (bf16 can fall back to fp32) and to fp32 contiguous."""
    forwards = {k: v for k, v in figures.items() if ": forward " in k}
    fastest = max(forwards, key=lambda k: forwards[k]["median"])
    fastest_kept = max((k for k in forwards if f": forward {kept} " in k),
                       key=lambda k: forwards[k]["median"])
    baseline = next(k for k in forwards if " fp32 contiguous," in k)
    default, before = f"{name}: extract, defaults", f"{name}: extract, --precision fp32"
    bench.record(f"{name}: the fastest forward is", [forwards[fastest]["median"]],
                 unit="img/s")
    bench.figures[f"{name}: the fastest forward is"]["variant"] = fastest.split(": forward ")[1]
    bench.ratio(f"{name}: extract, defaults / fastest forward (goal >= 0.9)", default, fastest)
    bench.ratio(f"{name}: extract, defaults / fastest forward in the precision they kept",
                default, fastest_kept)
    bench.ratio(f"{name}: extract, defaults / fp32 contiguous forward", default, baseline)
    bench.ratio(f"{name}: extract, --precision fp32 / fp32 contiguous forward", before,
                baseline)
    if layers:
        bench.ratio(f"{name}: time of --layers all / final only", default,
                    f"{name}: extract --layers all, defaults")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES),
                        help="folder-per-class images (default: ../shared/data/heritage/test)")
    parser.add_argument("--backbones", default=BACKBONES)
    parser.add_argument("--n", type=int, default=160, help="images per backbone (default: 160)")
    parser.add_argument("--batch-sizes", default="4,8,16,32",
                        help="batch sizes each forward variant is tried at (default: 4,8,16,32)")
    parser.add_argument("--extract-batch-size", type=int, default=None,
                        help="extract.py's --batch-size (default: its own default)")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", action="append", default=[], metavar="BACKBONE=PATH",
                        help="a weights file for a backbone (default: random weights; "
                             "the same work either way, bar the file's reading)")
    parser.add_argument("--compile", action="store_true",
                        help="also each forward variant through torch.compile")
    parser.add_argument("--layers", default="none", choices=("all", "none"),
                        help="also time extract --layers all (default: none)")
    args = parser.parse_args()
    args.weights = dict(item.split("=", 1) for item in args.weights)
    collection = sample(args.images, args.n)
    default = parser.get_default("backbones")
    name = "bench_extract" + ("" if args.backbones == default else
                              "_" + args.backbones.replace(",", "_").replace(":", "-"))
    bench = Bench(name, repeats=args.repeats, settings={
        "images": Path(args.images).name, "n": len(collection),
        "batch_sizes": args.batch_sizes, "extract_batch_size": args.extract_batch_size or "default",
        "workers": args.workers, "native_bf16": native_bf16(),
        "weights": {k: Path(v).name for k, v in args.weights.items()},
        "compile": args.compile, "layers": args.layers})
    for backbone in args.backbones.split(","):
        bench_backbone(bench, backbone, collection, args)
    bench.write()


if __name__ == "__main__":
    main()
