"""Off-the-shelf vs fine-tuning, side by side, for one backbone on real heritage images.

    python bench/bench_finetune.py                      # SqueezeNet, heritage/test, 6 epochs, CPU
    python bench/bench_finetune.py --backbone resnet50 --weights imagenet --device cuda --epochs 30

One fresh cache, one collection, one saved split (80/10/10): extraction with
the given weights, the softmax and logreg heads on the frozen features,
fine-tuning of the whole network from the same weights (the paper's recipe),
then the heads again on the fine-tuned trunk's features (Sabatelli et al.'s
theta-hat + off the shelf). Prints test top-1 of each, and the wall time.
On a 2-core CPU the default run takes about 10 minutes.
"""
import argparse
import tempfile
import time
from pathlib import Path

from featbank.classification.grid import ClassifyConfig, classify
from featbank.data.collection import from_folder
from featbank.extraction.engine import ExtractConfig, extract
from featbank.finetuning.train import FinetuneConfig, finetune

SHARED = Path(__file__).resolve().parents[2] / "shared"


def heads_top1(collection, cache: str, weights_prefix: str) -> dict:
    rows = classify(collection, ClassifyConfig(heads="softmax,logreg", cache_root=cache,
                                               weights=weights_prefix, jobs=1),
                    warn=lambda m: None)
    return {r["head"]: r["top1"] for r in rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(SHARED / "data/heritage/test"))
    parser.add_argument("--backbone", default="squeezenet1_1")
    parser.add_argument("--weights", default=str(SHARED / "weights/squeezenet1_1-imagenet.pth"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-fraction", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    collection = from_folder(args.images, name="bench")
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        [before] = extract(collection, ExtractConfig(backbones=args.backbone, weights=args.weights,
                                                     cache_root=cache, device=args.device,
                                                     progress=False))
        shelf = heads_top1(collection, cache, "all")
        tuned = finetune(collection, FinetuneConfig(
            backbone=args.backbone, task="label", init=args.weights, epochs=args.epochs,
            train_fraction=args.train_fraction, device=args.device, cache_root=cache,
            progress=False), log=lambda m: None)
        trunk = str(tuned.folder / "trunk.pth")
        extract(collection, ExtractConfig(backbones=args.backbone, weights=trunk, cache_root=cache,
                                          device=args.device, progress=False))
        from featbank.models.registry import weights_id
        again = heads_top1(collection, cache, weights_id(trunk))
        seconds = time.perf_counter() - start
    row = tuned.row
    print(f"{len(collection)} images of {args.images}; {args.backbone}; split "
          f"{row['n_train']}/{row['n_val']}/{row['n_test']}; {seconds:.0f} s in all")
    print(f"| {'method':<34} | test top-1 |")
    print(f"|{'-' * 36}|------------|")
    for head, top1 in shelf.items():
        print(f"| off the shelf, {head:<19} | {top1:>10.3f} |")
    label = f"fine-tuning ({row['epochs_run']} epochs, best {row['best_epoch']})"
    print(f"| {label:<34} | {row['top1']:>10.3f} |")
    for head, top1 in again.items():
        print(f"| fine-tuned trunk + {head:<15} | {top1:>10.3f} |")


if __name__ == "__main__":
    main()
