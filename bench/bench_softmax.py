"""Softmax head: the paper's recipe vs featbank's fast default, measured in one run.

    .venv/bin/python bench/bench_softmax.py                  # full Rijksmuseum shapes (~100k x 2048)
    .venv/bin/python bench/bench_softmax.py --scale 0.1      # 10% of the images, for a quick run

Synthetic GAP-like features with the shapes of Sabatelli et al.'s Rijksmuseum
tasks (about 100k images x 2048 features; material 206, type 1,054, artist
1,196 classes, long-tailed: Zipf-distributed class sizes, at least 10 images
a class), split 80/10/10 by featbank's stratified split. For each task, both
recipes train on train, early-stop on val. The fast recipe runs as
``classify.py`` runs it: with its L2 penalty chosen on val along the
registry's warm-started grid (``featbank.heads.registry.SOFTMAX_ALPHAS``); the paper's
recipe has nothing to tune. The bench prints the wall time of each, the
ratio paper / fast with tuning included (target >= 10x at equal or better
validation accuracy), the fast recipe's time without tuning, both validation
and test accuracies, the penalty chosen, and the peak memory. Each recipe gets
its best settings: Adam's fused kernel for the fast one; the paper's RMSprop
has no fused kernel in torch, and runs as ``featbank.heads.linear`` runs it.
Median and min-max of ``--repeats`` fits after a warm-up; written to
bench/results/bench_softmax.json.
"""
import argparse
import time

import numpy as np
from harness import Bench, peak_rss_gb

from featbank.data.tasks import SplitSpec, stratified_parts
from featbank.heads.registry import SOFTMAX_ALPHAS
from featbank.heads.softmax import SoftmaxClassifier

TASKS = {"material": 206, "type": 1054, "artist": 1196}


def synthetic_features(n: int, n_classes: int, dim: int = 2048, seed: int = 0):
    """Non-negative features (like post-ReLU GAP), Zipf class sizes, overlapping classes."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    sizes = np.maximum(10, np.floor(weights / weights.sum() * n)).astype(int)
    y = np.repeat(np.arange(n_classes), sizes)
    latent = 64
    means = rng.normal(size=(n_classes, latent)).astype(np.float32)
    projection = rng.normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)
    z = means[y] + rng.normal(scale=1.6, size=(len(y), latent)).astype(np.float32)
    X = np.maximum(z @ projection + rng.normal(scale=0.5, size=(len(y), dim)).astype(np.float32), 0)
    return X.astype(np.float32), y


def standardize(X, mean, std):
    return (X - mean) / std


def run_task(bench: Bench, name: str, n_classes: int, n: int, seed: int) -> None:
    X, y = synthetic_features(n, n_classes, seed=seed)
    parts = stratified_parts(y, SplitSpec(seed=seed))
    train, val, test = (parts == "train"), (parts == "val"), (parts == "test")
    mean, std = X[train].mean(0), X[train].std(0) + 1e-6
    X = standardize(X, mean, std)
    (X_train, y_train), (X_val, y_val) = (X[train], y[train]), (X[val], y[val])
    heads = {}

    def fitting(recipe: str, alphas):
        def seconds() -> float:  # the fit alone, not the copy of the parts
            start = time.perf_counter()
            head = SoftmaxClassifier(recipe="paper" if recipe == "paper" else "fast",
                                     random_state=seed)
            head.fit_path(X_train, y_train, X_val, y_val, "alpha", alphas)
            heads[recipe] = head
            return time.perf_counter() - start
        return seconds, "s"
    recipes = {"paper": [0.0], "fast, untuned": [0.0], "fast, tuned": SOFTMAX_ALPHAS}
    bench.interleave({f"{name} ({len(y)} x {n_classes} classes): {recipe}": fitting(recipe, a)
                      for recipe, a in recipes.items()})
    for recipe, head in heads.items():
        for part, (Xp, yp) in {"val": (X_val, y_val), "test": (X[test], y[test])}.items():
            bench.record(f"{name}: {recipe}, {part} top-1", [head.score(Xp, yp)], unit="")
        bench.record(f"{name}: {recipe}, epochs", [head.n_epochs_], unit="")
    bench.ratio(f"{name}: paper / fast, tuned", f"{name} ({len(y)} x {n_classes} classes): paper",
                f"{name} ({len(y)} x {n_classes} classes): fast, tuned")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the ~100k images to generate (default: 1.0)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench = Bench("bench_softmax", repeats=args.repeats, settings=vars(args))
    for name in args.tasks.split(","):
        run_task(bench, name, TASKS[name], int(100_000 * args.scale), args.seed)
    peak = peak_rss_gb()
    bench.record("peak memory", [peak], unit="GB")
    bench.write()


if __name__ == "__main__":
    main()
