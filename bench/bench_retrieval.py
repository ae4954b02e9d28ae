"""Retrieval at Rijksmuseum scale on the CPU: featbank's search vs the best plain numpy loop.

    .venv/bin/python bench/bench_retrieval.py [--rows 100000] [--dim 2048] [--k 10] [--scale 1.0] [--repeats 3]

Synthetic clustered float32 vectors (ROWS x DIM, ResNet50's width, 300
classes). 90 % form the gallery (train + val), 10 % query it, as in
``analyze.py retrieve``. Times:

- featbank (``featbank.analysis.similarity.nearest``: scikit-learn brute-force
  cosine search, float32 BLAS, chunked queries) over every query, plus the
  precision@k and AP@k of the result;
- the best loop a notebook could write in numpy, over every query too (measured,
  not extrapolated): L2-normalised float32 vectors, one BLAS product per block
  of 1,024 queries, ``argpartition`` for the top k, then a sort of those k.

Median and min-max of ``--repeats`` runs after a warm-up, with the speed-up
repeat by repeat; written to bench/results/bench_retrieval.json. Goal: the
full 100k x 2048 search in a few minutes on 2 cores.
"""
import argparse
import time

import numpy as np
from harness import Bench

from featbank.analysis.similarity import average_precision_at_k, nearest, precision_at_k


def clustered(rows: int, dim: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=rows)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    X = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 8192):  # in blocks: no float64 temporaries of the whole set
        stop = min(rows, start + 8192)
        X[start:stop] = centres[labels[start:stop]] * 0.6 + rng.standard_normal(
            (stop - start, dim), dtype=np.float32)
    return np.maximum(X, 0), labels  # non-negative, like post-ReLU pooled features


def baseline(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Top-k cosine neighbours in plain numpy, with its best settings."""
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    out = []
    for start in range(0, len(queries), 1024):
        q = queries[start:start + 1024]
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        scores = q @ g.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of --rows")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = max(1000, int(args.rows * args.scale))
    X, y = clustered(rows, args.dim, 300)
    n_gallery = int(rows * 0.9)
    gallery, queries = X[:n_gallery], X[n_gallery:]
    yg, yq = y[:n_gallery], y[n_gallery:]
    bench = Bench("bench_retrieval", repeats=args.repeats, settings={
        "gallery": len(gallery), "queries": len(queries), "dim": args.dim, "k": args.k})
    found, reference = [], []

    def timed(run, out):
        def seconds() -> float:
            start = time.perf_counter()
            out.append(run())
            return time.perf_counter() - start
        return seconds, "s"
    bench.interleave({
        f"featbank, {len(queries)} queries": timed(
            lambda: nearest(gallery, queries, args.k)[0], found),
        f"numpy float32 + argpartition, {len(queries)} queries": timed(
            lambda: baseline(gallery, queries, args.k), reference)})
    bench.ratio("speed-up (numpy time / featbank time)",
                f"numpy float32 + argpartition, {len(queries)} queries",
                f"featbank, {len(queries)} queries")
    relevant = yg[found[-1]] == yq[:, None]
    n_relevant = np.bincount(yg, minlength=300)[yq]
    same = float(np.mean(np.sort(reference[-1], 1) == np.sort(found[-1], 1)))
    bench.record(f"precision@{args.k}", [float(precision_at_k(relevant).mean())], unit="")
    bench.record(f"mAP@{args.k}", [float(average_precision_at_k(relevant, n_relevant).mean())],
                 unit="")
    bench.record("same neighbours as numpy", [same], unit="")
    bench.write()


if __name__ == "__main__":
    main()
