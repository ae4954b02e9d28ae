"""Extraction throughput vs the bare model's forward throughput, measured in one run.

    python bench/bench_extract.py [--images DIR] [--n 512] [--batch-size 32]

For each backbone: (a) the frozen trunk's forward pass alone over ready-made
normalised tensors, batch after batch, for the same number of images and the
same batch size and threads; (b) featbank's whole ``extract()`` on real images
(building the model, decoding, resizing, forward, writing the HDF5 file) into
a fresh cache. Prints (b) / (a): 1.0 means decoding and writing cost nothing
the model does not already wait for. Target: >= 0.9.
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from featbank.core.settings import default_workers
from featbank.data.collection import from_folder
from featbank.extraction.engine import ExtractConfig, extract
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/heritage/test"


def bare_forward_rate(name: str, n: int, batch_size: int) -> float:
    spec = get_spec(name)
    trunk = load_trunk(spec, "random")
    size = spec.preprocess.input_size
    x = torch.randn(batch_size, 3, size, size)
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    start = time.perf_counter()
    with torch.inference_mode():
        for b in sizes:
            trunk(x[:b])
    return n / (time.perf_counter() - start)


def extract_rate(name: str, collection, batch_size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as cache:
        config = ExtractConfig(backbones=name, weights="random", cache_root=cache,
                               batch_size=batch_size, workers=workers, progress=False)
        start = time.perf_counter()
        [report] = extract(collection, config)
        seconds = time.perf_counter() - start
    assert report.n_rows == len(collection)
    return len(collection) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES),
                        help="folder-per-class images (default: ../shared/data/heritage/test)")
    parser.add_argument("--backbones", default="squeezenet1_1,resnet50")
    parser.add_argument("--n", type=int, default=512, help="images per backbone (default: 512)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    full = from_folder(args.images, name="bench")
    step = max(1, len(full) // args.n)
    keep = full.ids[::step][:args.n]
    collection = type(full)(name="bench", root=full.root, ids=keep,
                            labels={t: [full.labels[t][full.ids.index(i)] for i in keep]
                                    for t in full.tasks})
    print(f"{len(collection)} images from {args.images}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads, {args.workers} decode workers")
    print(f"{'backbone':<16}{'forward img/s':>15}{'extract img/s':>15}{'ratio':>8}")
    for name in args.backbones.split(","):
        forward = bare_forward_rate(name, len(collection), args.batch_size)
        ours = extract_rate(name, collection, args.batch_size, args.workers)
        print(f"{name:<16}{forward:>15.1f}{ours:>15.1f}{ours / forward:>8.2f}")


if __name__ == "__main__":
    main()
