"""Retrieval at Rijksmuseum scale on the CPU: the search ``analyze.py retrieve`` runs vs the
best plain numpy loop.

    .venv/bin/python bench/bench_retrieval.py [--rows 100000] [--dim 2048] [--k 10] [--scale 1.0] [--repeats 3]

Synthetic clustered float32 vectors (ROWS x DIM, ResNet50's width, 300
classes, noisy enough that precision@k is well below 1), written as a feature
file. 90 % form the gallery (train + val), 10 % query it, as in
``analyze.py retrieve``. Times:

- featbank: what ``retrieve`` does, ``featbank.store.index.search`` on the
  feature file's similarity index (FAISS, exact below 200,000 rows), the
  search restricted to the gallery's rows; the index build is timed apart
  (it is made once and kept beside the file);
- the best loop a notebook could write in numpy over every query too:
  L2-normalised float32 vectors, one BLAS product per block of 1,024 queries,
  ``argpartition`` for the top k, then a sort of those k.

Plus the precision@k and AP@k of featbank's neighbours and how many are the
same as numpy's. Median and min-max of ``--repeats`` runs after a warm-up, with
the speed-up repeat by repeat; written to bench/results/bench_retrieval.json.
Goal: the full 100k x 2048 search in a few minutes on 2 cores.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import Bench

from featbank.analysis.similarity import average_precision_at_k, precision_at_k
from featbank.store.index import ensure_index, index_path, search
from featbank.store.writer import FeatureWriter

ATTRS = {"backbone": "synthetic", "weights": "random", "input_size": 224, "mean": [0.5] * 3,
         "std": [0.5] * 3, "resize": "squash", "crop_pct": 1.0, "interpolation": "bilinear",
         "dtype": "float32", "collection": "bench"}


def clustered(rows: int, dim: int, classes: int, seed: int = 0, signal: float = 0.12):
    """Class centres plus noise, non-negative like post-ReLU pooled features; ``signal``
    sets how far apart the classes are (0.12: precision@10 about 0.6 at 2048-d)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=rows)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    X = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 8192):  # in blocks: no float64 temporaries of the whole set
        stop = min(rows, start + 8192)
        X[start:stop] = centres[labels[start:stop]] * signal + rng.standard_normal(
            (stop - start, dim), dtype=np.float32)
    return np.maximum(X, 0), labels


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


def feature_file(folder: Path, X: np.ndarray) -> Path:
    path = folder / "bench.h5"
    out = FeatureWriter(path, {**ATTRS, "feature_dim": X.shape[1]})
    for start in range(0, len(X), 65_536):
        block = X[start:start + 65_536]
        out.add_batch([f"img/{k}.jpg" for k in range(start, start + len(block))], block)
    out.merge()
    return path


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
    gallery_rows = np.arange(n_gallery)
    queries = X[n_gallery:]
    yg, yq = y[:n_gallery], y[n_gallery:]
    bench = Bench("bench_retrieval", repeats=args.repeats, settings={
        "gallery": n_gallery, "queries": len(queries), "dim": args.dim, "k": args.k})
    with tempfile.TemporaryDirectory() as tmp:
        path = feature_file(Path(tmp), X)

        def build() -> None:
            index_path(path).unlink(missing_ok=True)
            ensure_index(path, warn=lambda m: None)
        bench.time("featbank: build the index (once per feature file)", build)
        index, info = ensure_index(path, warn=lambda m: None)
        found, reference = [], []

        def timed(run, out):
            def seconds() -> float:
                start = time.perf_counter()
                out.append(run())
                return time.perf_counter() - start
            return seconds, "s"
        search_label = f"featbank ({info.kind} index), {len(queries)} queries"
        numpy_label = f"numpy float32 + argpartition, {len(queries)} queries"
        bench.interleave({
            search_label: timed(lambda: search(index, queries, args.k, rows=gallery_rows)[0],
                                found),
            numpy_label: timed(lambda: baseline(X[:n_gallery], queries, args.k), reference)})
    bench.ratio("speed-up (numpy time / featbank time)", numpy_label, search_label)
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
