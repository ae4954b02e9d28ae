"""Likely label issues with known answers: real heritage photographs, labels flipped.

    .venv/bin/python bench/bench_label_issues.py [--images DIR] [--flip 0.05] [--repeats 3]

From a folder of real images with one sub-folder per class (default
../shared/data/heritage/test), a manifest gives ``--flip`` of the images
(seeded, a new draw per repeat) another class, drawn at random; features
come from the real ImageNet SqueezeNet 1.1 of ../shared/weights (random
weights without it). ``analyze.py label-issues`` (out-of-fold logreg,
cleanlab) ranks every image; reported per repeat: precision among the top
k, k the number flipped; the AUROC of the label quality score against the
flips, and that of a confidence-only baseline (the head's confidence in
its own prediction, blind to the given label). Median and min-max of the
repeats; written to bench/results/bench_label_issues.json.
"""
import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Bench  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def flipped_manifest(images: Path, path: Path, fraction: float, seed: int) -> set[str]:
    """A CSV (image, label) of every image under ``images``' class folders, ``fraction`` of
    them with another class; returns the ids of those flipped."""
    files = sorted(p for p in images.glob("*/*") if p.is_file())
    classes = sorted({p.parent.name for p in files})
    rng = np.random.default_rng(seed)
    flip = set(rng.choice(len(files), size=round(fraction * len(files)), replace=False).tolist())
    flipped = set()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        for k, p in enumerate(files):
            label = p.parent.name
            if k in flip:
                label = rng.choice([c for c in classes if c != label])
                flipped.add(str(p.relative_to(images)))
            writer.writerow([str(p.relative_to(images)), label])
    return flipped


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (higher: more likely positive), ties halved."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def one_draw(images: Path, weights: str, fraction: float, seed: int, tmp: Path) -> dict:
    import featbank as fb

    manifest = tmp / f"flipped{seed}.csv"
    flipped = flipped_manifest(images, manifest, fraction, seed)
    cache = tmp / f"cache{seed}"
    fb.extract(backbone="squeezenet1_1", weights=weights, manifest=manifest, root=images,
               collection="flipped", cache=cache, progress=False)
    started = time.perf_counter()
    frame = fb.label_issues("squeezenet1_1", "label", collection="flipped", cache=cache)
    seconds = time.perf_counter() - started
    is_flipped = frame["id"].isin(flipped).to_numpy()
    k = len(flipped)
    return {"precision_at_k": float(is_flipped[:k].mean()), "k": k,
            "auroc": auroc(-frame["score"].to_numpy(), is_flipped),
            "auroc_confidence": auroc(-frame["confidence"].to_numpy(), is_flipped),
            "flagged": int(frame["issue"].sum()),
            "flagged_precision": float(is_flipped[frame["issue"].to_numpy()].mean()),
            "n": len(frame), "seconds": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(SHARED / "data/heritage/test"))
    parser.add_argument("--flip", type=float, default=0.05, help="fraction of labels flipped")
    parser.add_argument("--repeats", type=int, default=3, help="draws of the flips")
    args = parser.parse_args()
    weights = SHARED / "weights/squeezenet1_1-imagenet.pth"
    weights = str(weights) if weights.is_file() else "random"
    bench = Bench("bench_label_issues", repeats=args.repeats, settings={
        "images": args.images, "flip": args.flip, "backbone": "squeezenet1_1",
        "weights": Path(weights).name, "head": "logreg", "folds": 5})
    with tempfile.TemporaryDirectory() as tmp:
        draws = [one_draw(Path(args.images), weights, args.flip, seed, Path(tmp))
                 for seed in range(args.repeats)]
    k = draws[0]["k"]
    bench.record(f"precision among the top k = {k} (the flipped)",
                 [d["precision_at_k"] for d in draws], unit="")
    bench.record("AUROC of the label quality score", [d["auroc"] for d in draws], unit="")
    bench.record("AUROC of confidence only (baseline)", [d["auroc_confidence"] for d in draws],
                 unit="")
    bench.record("flagged by cleanlab", [d["flagged"] for d in draws], unit="images")
    bench.record("precision of the flagged", [d["flagged_precision"] for d in draws], unit="")
    bench.record(f"label-issues over {draws[0]['n']:,} images", [d["seconds"] for d in draws],
                 unit="s", warmup=False)
    bench.write()


if __name__ == "__main__":
    main()
