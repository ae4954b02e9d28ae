"""Extraction throughput against the bare model's forward throughput, on real images.

    .venv/bin/python bench/bench_extract.py [--images DIR] [--n 512] [--batch-size 32] [--repeats 3]
        [--backbones squeezenet1_1,xception --weights xception=PATH] [--layers all|none]

For each backbone: (a) the frozen trunk's forward pass alone over ready-made
normalised tensors, batch after batch, for the same number of images, batch
size and threads, after a warm-up pass; (b) featbank's ``extract()`` on real
images into a fresh cache: decoding, resizing, forward, writing the HDF5 file,
timed from the first decoded batch to the committed file (the steady
pipeline), and as the whole call (with model loading and worker start-up).
(b) / (a), repeat by repeat, is the ratio: 1.0 means decoding and writing cost
nothing the model does not already wait for. (c) with ``--layers all`` (the
default), the same extraction caching every layer of the trunk from the one
forward pass (a file per layer); (c) / (b) in time is what every depth costs
over the trunk's output alone. Median and min-max of
``--repeats`` runs after a warm-up; written to bench/results/bench_extract.json.
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
from harness import Bench

from featbank.core.settings import default_workers
from featbank.data.collection import Collection, from_folder
from featbank.extraction.engine import ExtractConfig, extract
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/heritage/test"


def bare_forward_rate(name: str, n: int, batch_size: int, weights: str = "random") -> float:
    """img/s of the trunk alone over ``n`` ready-made inputs (the trunk loaded once)."""
    spec = get_spec(name)
    trunk = load_trunk(spec, weights)
    size = spec.preprocess.input_size
    x = torch.randn(batch_size, 3, size, size)
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    start = time.perf_counter()
    with torch.inference_mode():
        for b in sizes:
            trunk(x[:b])
    return n / (time.perf_counter() - start)


def extract_rates(name: str, collection: Collection, batch_size: int, workers: int,
                  weights: str = "random", layers: str = "final") -> tuple[float, float]:
    """(img/s from the first batch to the committed files, img/s of the whole call)."""
    with tempfile.TemporaryDirectory() as cache:
        config = ExtractConfig(backbones=name, weights=weights, cache_root=cache,
                               batch_size=batch_size, workers=workers, progress=False,
                               layers=layers)
        reports = extract(collection, config)
    assert all(r.n_rows == len(collection) for r in reports)
    assert layers == "final" or len(reports) > 1
    return len(collection) / reports[0].stream_seconds, len(collection) / reports[0].seconds


def sample(images: str, n: int) -> Collection:
    full = from_folder(images, name="bench")
    step = max(1, len(full) // n)
    keep = full.ids[::step][:n]
    return Collection(name="bench", root=full.root, ids=keep,
                      labels={t: [full.labels[t][full.ids.index(i)] for i in keep]
                              for t in full.tasks})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES),
                        help="folder-per-class images (default: ../shared/data/heritage/test)")
    parser.add_argument("--backbones", default="squeezenet1_1,resnet50")
    parser.add_argument("--n", type=int, default=512, help="images per backbone (default: 512)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", action="append", default=[], metavar="BACKBONE=PATH",
                        help="a weights file for a backbone (default: random weights; "
                             "the same work either way, bar the file's reading)")
    parser.add_argument("--layers", default="all", choices=("all", "none"),
                        help="also time extract --layers all (default: all)")
    args = parser.parse_args()
    args.weights = dict(item.split("=", 1) for item in args.weights)
    collection = sample(args.images, args.n)
    default = parser.get_default("backbones")
    name = "bench_extract" + ("" if args.backbones == default else
                              "_" + args.backbones.replace(",", "_").replace(":", "-"))
    bench = Bench(name, repeats=args.repeats, settings={
        "images": str(args.images), "n": len(collection), "batch_size": args.batch_size,
        "workers": args.workers, "backbones": args.backbones, "layers": args.layers})
    for name in args.backbones.split(","):
        weights = args.weights.get(name, "random")
        forward, stream = f"{name}: bare forward", f"{name}: extract, first batch to file"
        rates = []

        def extraction() -> float:
            rates.append(extract_rates(name, collection, args.batch_size, args.workers,
                                       weights))
            return rates[-1][0]
        every = f"{name}: extract --layers all, first batch to files"
        steps = {  # each extraction right after a bare forward pass: fair pairs
            forward: (lambda: bare_forward_rate(name, len(collection), args.batch_size,
                                                weights), "img/s"),
            stream: (extraction, "img/s")}
        if args.layers == "all":
            steps[every] = (lambda: extract_rates(name, collection, args.batch_size,
                                                  args.workers, weights, "all")[0], "img/s")
        bench.interleave(steps)
        bench.record(f"{name}: extract, whole call", [w for _, w in rates[1:]], unit="img/s")
        bench.ratio(f"{name}: extract / bare forward", stream, forward)
        if args.layers == "all":  # a time ratio: the single layer's rate over every layer's
            bench.ratio(f"{name}: time of --layers all / final only", stream, every)
    bench.write()


if __name__ == "__main__":
    main()
