"""The similarity index at scale: build, memory, disk, queries/s and recall, on synthetic vectors.

    .venv/bin/python bench/bench_index.py --rows 1000000 --dim 512 [--repeats 3]

Writes ROWS x DIM synthetic clustered float32 vectors (post-ReLU-like, 1,000
clusters) to a feature file in chunks, then, each in a fresh process so that
its peak memory (RSS) is its own:

- build: ``featbank.store.index.ensure_index`` from nothing (the kind and
  parameters it chose are recorded), its time, peak memory and size on disk;
- queries: 1,000 rows of the file (perturbed) as a batch, and 200 one at a
  time: queries per second;
- recall@10 of those 1,000 queries against exact search (a streamed pass over
  the file, chunk by chunk, keeping each query's 10 best);
- growth: 1 % more rows added to the file, then ``ensure_index`` again (only
  the new rows are indexed), its time against the build's;
- export: the file streamed to Parquet (``analyze.py export``'s writer), its
  time and peak memory, in a fresh process, once.

Goals at 5M x 512: build <= 20 minutes, peak memory <= 6 GB, recall@10 >= 0.90,
>= 500 queries/s in batches, growth by 1 % <= 5 % of the build time. The build
and growth are measured once per repeat on a fresh copy of the index state;
written to bench/results/bench_index.json (or bench_index_<rows>.json).
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Bench, in_child, peak_rss_gb  # noqa: E402

CHUNK = 65_536


def write_file(path: Path, rows: int, dim: int, first: int = 0, seed: int = 0) -> None:
    """Clustered non-negative vectors, written (or appended) chunk by chunk as extraction does."""
    from featbank.store.writer import FeatureWriter

    attrs = {"backbone": "bench", "feature_dim": dim, "weights": "random", "input_size": 224,
             "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash", "crop_pct": 1.0,
             "interpolation": "bilinear", "dtype": "float32", "collection": "bench"}
    centres = np.random.default_rng(seed).normal(size=(1000, dim)).astype(np.float32)
    out = FeatureWriter(path, attrs)
    for start in range(first, first + rows, CHUNK):
        n = min(CHUNK, first + rows - start)
        rng = np.random.default_rng(seed + 1 + start)
        block = centres[rng.integers(0, 1000, n)] + rng.normal(size=(n, dim)).astype(np.float32)
        out.add_batch([f"img/{k:09d}" for k in range(start, start + n)],
                      np.maximum(block, 0).astype(np.float32))
    out.merge()


def _index_run(path: str) -> dict:
    """In a fresh process: ensure_index's seconds and the process's peak memory."""
    from featbank.store.index import ensure_index, index_path

    start = time.perf_counter()
    index, info = ensure_index(Path(path), warn=lambda m: None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_gb": peak_rss_gb(),
            "disk_gb": index_path(Path(path)).stat().st_size / 2 ** 30, "factory": info.factory,
            "nprobe": info.nprobe, "rows": info.rows}


def _export_run(path: str, target: str) -> dict:
    """In a fresh process: the Parquet export's seconds, peak memory and size."""
    from featbank.analysis.export import write_export

    start = time.perf_counter()
    [written] = write_export(Path(path), Path(target), "parquet", {})
    return {"seconds": time.perf_counter() - start,
            "peak_gb": peak_rss_gb(),
            "disk_gb": written.stat().st_size / 2 ** 30}


def queries_of(path: Path, n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "r") as f:
        rows = np.sort(rng.choice(f["features"].shape[0], n, replace=False))
        Q = f["features"][rows]
    return (Q + 0.05 * rng.normal(size=Q.shape)).astype(np.float32)


def exact_top(path: Path, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine top-k by one streamed pass over the file."""
    Q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best_s = np.full((len(Q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(Q), k), dtype=np.int64)
    with h5py.File(path, "r") as f:
        total = f["features"].shape[0]
        for start in range(0, total, CHUNK):
            X = f["features"][start:start + CHUNK]
            X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
            scores = Q @ X.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
            cand_i = np.concatenate([best_i, top + start], axis=1)
            keep = np.argsort(-cand_s, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_i


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default=None, help="where to write the file (default: a "
                        "temporary folder; 5M x 512 takes about 20 GB while written)")
    args = parser.parse_args()
    from featbank.store.index import ensure_index, index_path, search

    bench = Bench(f"bench_index_{args.rows}", repeats=args.repeats,
                  settings={"rows": args.rows, "dim": args.dim})
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        path = Path(tmp) / "bench.h5"
        bench.record("write the feature file", [_timed(write_file, path, args.rows, args.dim)],
                     unit="s")
        runs = []

        def build() -> float:
            for stale in (index_path(path), index_path(path).with_suffix(".faiss.json")):
                stale.unlink(missing_ok=True)
            runs.append(in_child(_index_run, str(path)))
            return runs[-1]["seconds"]
        bench.measure("build", build, unit="s", warmup=False)
        bench.record("build, peak memory", [r["peak_gb"] for r in runs], unit="GB")
        bench.record("index size on disk", [runs[-1]["disk_gb"]], unit="GB")
        bench.figures["build"].update(factory=runs[-1]["factory"], nprobe=runs[-1]["nprobe"])
        index, info = ensure_index(path, warn=lambda m: None)
        queries = queries_of(path, 1000)
        found = []
        bench.measure("queries/s, 1,000 in a batch", lambda: len(queries) / _timed(
            lambda: found.append(search(index, queries, 10)[0])), unit="q/s")
        bench.measure("queries/s, one at a time", lambda: 200 / _timed(
            lambda: [search(index, q[None], 10) for q in queries[:200]]), unit="q/s")
        exact = exact_top(path, queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found[-1], exact)])
        bench.record("recall@10 against exact search", [float(recall)], unit="")
        copy = Path(tmp) / "copy"
        grown = []

        def grow() -> float:
            """1 % more rows on a copy of the file and index as built: only they are added."""
            if copy.exists():
                shutil.rmtree(copy)
            copy.mkdir()
            for item in Path(tmp).iterdir():
                if item.name.startswith("bench.h5") and item.name != "bench.h5.lock":
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, copy / item.name)
            write_file(copy / "bench.h5", args.rows // 100, args.dim, first=args.rows, seed=1)
            grown.append(in_child(_index_run, str(copy / "bench.h5")))
            return grown[-1]["seconds"]
        bench.measure("grow by 1 % of the rows", grow, unit="s", warmup=False)
        bench.ratio("growth / build (goal <= 0.05)", "grow by 1 % of the rows", "build")
        shutil.rmtree(copy)
        exported = in_child(_export_run, str(path), str(Path(tmp) / "export"))
        bench.record("export to Parquet", [exported["seconds"]], unit="s")
        bench.record("export to Parquet, peak memory", [exported["peak_gb"]], unit="GB")
        bench.record("Parquet size on disk", [exported["disk_gb"]], unit="GB")
    bench.write()


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
