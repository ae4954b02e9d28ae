"""A feature file that grows in place: adding images vs rewriting the file, in one run.

    .venv/bin/python bench/bench_cache.py [--rows 100000] [--dim 2048] [--add 100] [--repeats 3]

Builds a ROWS x DIM float32 feature file (ResNet50's shape at Rijksmuseum
scale, about 800 MB), then times:

- adding ADD images the way extraction does (one new shard, a new main file);
- the same addition as a full rewrite (every stored vector copied into one
  new shard: what featbank did before shards, and what joining shards costs);
- a no-op re-run of ``extract()`` over the cached ids, every image unchanged
  (nothing to decode, so no model is loaded).

Goals: the addition under 5 % of the rewrite; the no-op re-run under 10 s.
Median and min-max of ``--repeats`` runs after a warm-up (each addition adds new
images); written to bench/results/bench_cache.json.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import Bench

import featbank.store.layout as layout
import featbank.store.writer as writer
from featbank.data.collection import Collection
from featbank.extraction.engine import ExtractConfig, extract
from featbank.models.registry import get_spec
from featbank.models.trunks import resolve_weights
from featbank.store.provenance import feature_path, file_attrs


def add_rows(out: writer.FeatureWriter, first: int, n: int, dim: int, *, step: int = 4096) -> float:
    rng = np.random.default_rng(first)
    start = time.perf_counter()
    for at in range(first, first + n, step):
        count = min(step, first + n - at)
        out.add_batch([f"objects/{k:08d}.jpg" for k in range(at, at + count)],
                      rng.standard_normal((count, dim), dtype=np.float32))
    out.merge()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2048, help="must be resnet50's 2048 for the "
                        "no-op extract() run (default: 2048)")
    parser.add_argument("--add", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench = Bench("bench_cache", repeats=args.repeats, settings=vars(args))
    spec = get_spec("resnet50")
    attrs = file_attrs(backbone=spec.name, feature_dim=spec.feature_dim,
                       preprocess=spec.preprocess.attrs(),
                       weights=resolve_weights(spec, "random").attrs(), dtype="float32",
                       collection="bench")
    attrs["feature_dim"] = args.dim
    writer.SHARD_GRACE = 0  # no reader shares this file: superseded shards go at once
    with tempfile.TemporaryDirectory() as root:
        path = feature_path(root, "bench", spec.name, "random")
        out = writer.FeatureWriter(path, attrs)
        bench.record("build the file", [add_rows(out, 0, args.rows, args.dim)], unit="s")
        next_id = [args.rows]

        def grow() -> float:
            next_id[0] += args.add
            return add_rows(out, next_id[0] - args.add, args.add, args.dim)

        def rewrite() -> float:
            limit, layout.MAX_SHARDS = layout.MAX_SHARDS, 0  # every fold joins all shards
            try:
                return grow()
            finally:
                layout.MAX_SHARDS = limit
        bench.measure(f"add {args.add} images", grow, unit="s")
        bench.measure(f"add {args.add} images as a full rewrite", rewrite, unit="s")
        bench.ratio("addition / rewrite (goal < 0.05)", f"add {args.add} images",
                    f"add {args.add} images as a full rewrite")
        # every row's image exists (empty files: nothing is decoded), so the rows, written
        # without stamps, take their images' stamps on the warm-up run and then stand
        ids = [f"objects/{k:08d}.jpg" for k in range(next_id[0])]
        images = Path(root) / "images"
        (images / "objects").mkdir(parents=True)
        for image_id in ids:
            (images / image_id).touch()
        collection = Collection(name="bench", root=images, ids=ids,
                                labels={"label": ["x"] * len(ids)})

        def noop() -> None:
            [report] = extract(collection, ExtractConfig(backbones="resnet50", weights="random",
                                                         cache_root=root, progress=False))
            assert report.n_new == 0 and report.n_rows == next_id[0], report
        bench.time(f"no-op re-run over {len(ids)} cached ids (goal < 10 s)", noop)
    bench.write()


if __name__ == "__main__":
    main()
