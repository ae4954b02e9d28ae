"""Softmax head: the paper's recipe vs featbank's fast default, measured in one run.

    python bench/bench_softmax.py                  # full Rijksmuseum shapes (~100k x 2048)
    python bench/bench_softmax.py --scale 0.1      # 10% of the images, for a quick run

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
and test accuracies, the penalty chosen, and the peak memory.
"""
import argparse
import resource
import time

import numpy as np

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


def run_task(name: str, n_classes: int, n: int, seed: int) -> dict:
    X, y = synthetic_features(n, n_classes, seed=seed)
    parts = stratified_parts(y, SplitSpec(seed=seed))
    train, val, test = (parts == "train"), (parts == "val"), (parts == "test")
    mean, std = X[train].mean(0), X[train].std(0) + 1e-6
    X = standardize(X, mean, std)
    out = {"task": name, "n": len(y), "classes": n_classes}
    (X_train, y_train), (X_val, y_val) = (X[train], y[train]), (X[val], y[val])
    for recipe, alphas in (("paper", [0.0]), ("untuned", [0.0]), ("fast", SOFTMAX_ALPHAS)):
        start = time.perf_counter()  # the fit alone, not the copy of the parts
        head = SoftmaxClassifier(recipe="paper" if recipe == "paper" else "fast",
                                 random_state=seed)
        head.fit_path(X_train, y_train, X_val, y_val, "alpha", alphas)
        out[recipe] = {"seconds": time.perf_counter() - start, "epochs": head.n_epochs_,
                       "val": head.score(X_val, y_val), "test": head.score(X[test], y[test]),
                       "alpha": head.alpha}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the ~100k images to generate (default: 1.0)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'task':<10}{'n':>8}{'classes':>8}{'paper s':>10}{'fast s':>9}{'ratio':>7}"
          f"{'untuned s':>11}{'val paper':>11}{'val fast':>10}{'test paper':>12}{'test fast':>11}"
          f"{'alpha':>8}")
    for name in args.tasks.split(","):
        r = run_task(name, TASKS[name], int(100_000 * args.scale), args.seed)
        p, f, u = r["paper"], r["fast"], r["untuned"]
        print(f"{name:<10}{r['n']:>8}{r['classes']:>8}{p['seconds']:>10.1f}{f['seconds']:>9.1f}"
              f"{p['seconds'] / f['seconds']:>7.1f}{u['seconds']:>11.1f}{p['val']:>11.3f}"
              f"{f['val']:>10.3f}{p['test']:>12.3f}{f['test']:>11.3f}{f['alpha']:>8g}"
              f"   epochs {p['epochs']:.0f} vs {f['epochs']:.2f} ({u['epochs']:.2f} untuned)",
              flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
