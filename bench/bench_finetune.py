"""Off-the-shelf vs fine-tuning, side by side, for one backbone on real heritage images.

    .venv/bin/python bench/bench_finetune.py        # SqueezeNet, heritage/test, 3 epochs, CPU
    .venv/bin/python bench/bench_finetune.py --backbone resnet50 --weights imagenet --device cuda --epochs 30  # template: a GPU

One fresh cache, one collection, one saved split (80/10/10): extraction with
the given weights, the softmax and logreg heads on the frozen features,
fine-tuning of the whole network from the same weights (the paper's recipe),
then the heads again on the fine-tuned trunk's features (Sabatelli et al.'s
theta-hat + off the shelf). Records test top-1 of each and the wall time of
the whole pipeline, over ``--repeats`` runs in fresh caches (no warm-up: each
run is a whole pipeline; the accuracies are seeded, so they repeat); written to
bench/results/bench_finetune.json.
"""
import argparse
import tempfile
import time
from pathlib import Path

from harness import Bench

from featbank.classification.grid import ClassifyConfig, classify
from featbank.data.collection import from_folder
from featbank.extraction.engine import ExtractConfig, extract
from featbank.finetuning.train import FinetuneConfig, finetune
from featbank.models.registry import weights_id

SHARED = Path(__file__).resolve().parents[2] / "shared"


def heads_top1(collection, cache: str, weights_prefix: str) -> dict:
    rows = classify(collection, ClassifyConfig(heads="softmax,logreg", cache_root=cache,
                                               weights=weights_prefix, jobs=1),
                    warn=lambda m: None)
    return {r["head"]: r["top1"] for r in rows}


def pipeline(args, collection) -> dict:
    """One whole run in a fresh cache: test top-1 of each method, and the seconds."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        extract(collection, ExtractConfig(backbones=args.backbone, weights=args.weights,
                                          cache_root=cache, device=args.device, progress=False))
        shelf = heads_top1(collection, cache, "all")
        tuned = finetune(collection, FinetuneConfig(
            backbone=args.backbone, task="label", init=args.weights, epochs=args.epochs,
            train_fraction=args.train_fraction, device=args.device, cache_root=cache,
            progress=False), log=lambda m: None)
        trunk = str(tuned.folder / "trunk.pth")
        extract(collection, ExtractConfig(backbones=args.backbone, weights=trunk, cache_root=cache,
                                          device=args.device, progress=False))
        again = heads_top1(collection, cache, weights_id(trunk))
        row = tuned.row
        return {"seconds": time.perf_counter() - start,
                **{f"off the shelf, {h}": v for h, v in shelf.items()},
                f"fine-tuning ({args.epochs} epochs at most)": row["top1"],
                **{f"fine-tuned trunk + {h}": v for h, v in again.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(SHARED / "data/heritage/test"))
    parser.add_argument("--backbone", default="squeezenet1_1")
    parser.add_argument("--weights", default=str(SHARED / "weights/squeezenet1_1-imagenet.pth"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-fraction", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    collection = from_folder(args.images, name="bench")
    bench = Bench("bench_finetune", repeats=args.repeats, settings=vars(args))
    runs = []
    bench.measure("whole pipeline", lambda: runs.append(pipeline(args, collection)) or
                  runs[-1]["seconds"], unit="s", warmup=False)
    for key in runs[0]:
        if key != "seconds":
            bench.record(f"test top-1, {key}", [r[key] for r in runs], unit="")
    bench.write()


if __name__ == "__main__":
    main()
