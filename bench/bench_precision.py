"""What the default precision costs in accuracy and gains in time, on real heritage images.

    .venv/bin/python bench/bench_precision.py [--images DIR] [--trunks xception,...]
        [--finetune squeezenet1_1] [--epochs 2] [--repeats 3]

1. **Extraction.** Each real ImageNet trunk of ../shared/weights extracts the
   collection twice, in fresh caches: with featbank's defaults (``--precision
   auto``: bf16 on a CPU with native bf16, kept only within 3 % of fp32 on the
   first batch, else fp32 channels-last), with ``--precision fp32`` (the
   contiguous path before) and with ``--precision bf16`` (kept whatever its
   error). The logreg head gives each one's test top-1, the mean over five
   seeded splits (one split's 140 test images move in steps of 0.007); the
   difference is the cost of the default (goal: within 0.01). Seeded, so one
   run is its figure.
2. **Fine-tuning** of ``--finetune`` from its ImageNet weights for ``--epochs``
   epochs, with ``--precision auto`` and with ``--precision fp32``, ``--repeats``
   times each, interleaved: the seconds of an epoch (the median of the run's
   epochs), the speed-up repeat by repeat (goal: >= 1.8), and the test top-1 of
   each with the fp32 run's 95 % interval.

The extraction figures are written to bench/results/bench_precision.json, the
fine-tuning ones to bench_precision_finetune.json, so that ``--trunks ''`` or
``--finetune ''`` re-runs one part without losing the other.
"""
import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from harness import Bench

from featbank.classification.grid import ClassifyConfig, classify
from featbank.data.collection import from_folder
from featbank.extraction.engine import ExtractConfig, extract
from featbank.finetuning.train import FinetuneConfig, finetune
from featbank.store.features import read_features

SHARED = Path(__file__).resolve().parents[2] / "shared"
SPLITS = 5  # seeded splits the logreg top-1 is averaged over: one is 140 test images
WEIGHTS = {"xception": "xception-imagenet.pth",
           "timm:tf_efficientnet_lite0": "tf_efficientnet_lite0-imagenet.pth",
           "squeezenet1_1": "squeezenet1_1-imagenet.pth"}


def logreg_top1(collection, trunk: str, weights: str, precision: str):
    """(test top-1 of logreg on the trunk's features, the precision the rows record, the
    features)."""
    with tempfile.TemporaryDirectory() as cache:
        [report] = extract(collection, ExtractConfig(backbones=trunk, weights=weights,
                                                     cache_root=cache, precision=precision,
                                                     progress=False))
        data = read_features(report.path)
        rows = classify(collection, ClassifyConfig(heads="logreg", cache_root=cache, jobs=1,
                                                   repeats=SPLITS), warn=lambda m: None)
    return statistics.mean(r["top1"] for r in rows), data.provenance["precision"], data


def largest_error(a, b) -> float:
    rows = {i: k for k, i in enumerate(b.ids)}
    B = b.X[[rows[i] for i in a.ids]].astype(np.float64)
    return float((np.linalg.norm(a.X - B, axis=1) / np.linalg.norm(B, axis=1)).max())


def fine_tuned(collection, trunk: str, weights: str, epochs: int, precision: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        result = finetune(collection, FinetuneConfig(
            backbone=trunk, task="label", init=weights, epochs=epochs, cache_root=cache,
            precision=precision, progress=False), log=lambda m: None)
    epoch = statistics.median(h["seconds"] for h in result.history if h["epoch"] > 0)
    return {"epoch": epoch, "top1": result.row["top1"], "ci": result.row["top1_ci"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(SHARED / "data/heritage/test"))
    parser.add_argument("--trunks", default=",".join(WEIGHTS))
    parser.add_argument("--finetune", default="squeezenet1_1")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    collection = from_folder(args.images, name="bench")
    settings = {"images": Path(args.images).name, "n": len(collection)}
    trunks = list(filter(None, args.trunks.split(",")))
    if trunks:
        extraction(collection, trunks, Bench("bench_precision", repeats=args.repeats,
                                             settings={**settings, "trunks": args.trunks}))
    if args.finetune:
        fine_tuning(collection, args, Bench("bench_precision_finetune", repeats=args.repeats,
                                            settings={**settings, "finetune": args.finetune,
                                                      "epochs": args.epochs}))


def extraction(collection, trunks: list[str], bench: Bench) -> None:
    """Part 1: logreg top-1 on each trunk's features in each precision."""
    for trunk in trunks:
        weights = str(SHARED / "weights" / WEIGHTS[trunk])
        default, made, _ = logreg_top1(collection, trunk, weights, "auto")
        fp32, _, reference = logreg_top1(collection, trunk, weights, "fp32")
        bf16, _, rounded = logreg_top1(collection, trunk, weights, "bf16")
        bench.record(f"{trunk}: logreg test top-1, defaults ({made})", [default], unit="")
        bench.record(f"{trunk}: logreg test top-1, --precision fp32", [fp32], unit="")
        bench.record(f"{trunk}: logreg test top-1, --precision bf16", [bf16], unit="")
        bench.record(f"{trunk}: defaults - fp32 (goal within 0.01)", [default - fp32], unit="")
        bench.record(f"{trunk}: bf16 - fp32", [bf16 - fp32], unit="")
        bench.record(f"{trunk}: bf16 features, largest relative error against fp32",
                     [largest_error(rounded, reference)], unit="")
    bench.write()


def fine_tuning(collection, args, bench: Bench) -> None:
    """Part 2: epoch time and test top-1 of fine-tuning, defaults against fp32."""
    runs: dict[str, list] = {"auto": [], "fp32": []}
    weights = str(SHARED / "weights" / WEIGHTS[args.finetune])

    def epoch(precision: str):
        def run() -> float:
            runs[precision].append(fine_tuned(collection, args.finetune, weights, args.epochs,
                                              precision))
            return runs[precision][-1]["epoch"]
        return run, "s"
    name = args.finetune
    bench.interleave({f"{name}: fine-tuning epoch, defaults": epoch("auto"),
                      f"{name}: fine-tuning epoch, --precision fp32": epoch("fp32")},
                     warmup=False)
    bench.ratio(f"{name}: fine-tuning speed-up, fp32 epoch / default epoch (goal >= 1.8)",
                f"{name}: fine-tuning epoch, --precision fp32",
                f"{name}: fine-tuning epoch, defaults")
    for precision, runs_of in runs.items():
        named = "defaults" if precision == "auto" else "--precision fp32"
        bench.record(f"{name}: fine-tuned test top-1, {named}", [r["top1"] for r in runs_of],
                     unit="")
    low, high = runs["fp32"][0]["ci"]
    bench.record(f"{name}: fp32 run's 95 % interval, low", [low], unit="")
    bench.record(f"{name}: fp32 run's 95 % interval, high", [high], unit="")
    bench.write()


if __name__ == "__main__":
    main()
