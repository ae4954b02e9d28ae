"""Every head on one synthetic full-scale cell per Rijksmuseum task, tuning included.

    .venv/bin/python bench/bench_grid.py                      # full scale (~100k x 2048 a task)
    .venv/bin/python bench/bench_grid.py --scale 0.05         # 5 % of the images, a quick run
    .venv/bin/python bench/bench_grid.py --scale 0.1 --reference   # also scikit-learn's slow solvers

The features are bench_softmax.py's (GAP-like, Zipf class sizes, material 206,
type 1,054, artist 1,196 classes), split 80/10/10 by featbank's stratified
split. Each head is featbank's registry pipeline (standardise -> head) fitted
by ``featbank.heads.registry.fit_head`` with the registry's grid, chosen on the
validation part, exactly as ``classify.py`` does. Every head x task runs in
a fresh process, so each line's peak memory is its own (the features
included). One line per head x task x feature size: seconds (fit and
tuning), validation and test top-1, the value chosen, the engine, peak
memory. The last line estimates the whole off-the-shelf grid against the
30-minute goal: the sum, over the grid's backbones (``--dims``, by default
Sabatelli et al.'s four: ResNet50, Inception-V3 and Xception give 2048-d
vectors, VGG19 512-d), of the cells measured at each one's feature size.

``--reference`` adds scikit-learn's own solvers for the same cells, for the
accuracy comparison: LogisticRegression (lbfgs) and LinearSVC tuned over the
same C grid, and a 300-tree random forest (scikit-learn's default settings).
They take hours at full scale; run them at 10 %.

Each cell runs ``--repeats`` times, each in a fresh process (so no warm-up
run: a fresh process is the cold start a cell pays); the median and min-max of
its seconds, and its accuracies, are written to bench/results/bench_grid.json.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_softmax import TASKS, synthetic_features  # noqa: E402
from harness import Bench, in_child, peak_rss_gb  # noqa: E402

REFERENCES = {"logreg (sklearn)": ("logreg", {"head__engine": "sklearn"}),
              "svm (sklearn)": ("svm", {"head__engine": "sklearn"}),
              "rf (300 trees)": ("rf", "default-forest")}


def run_cell(task: str, n: int, head: str, seed: int, dim: int = 2048) -> dict:
    """One head on one task, in its own process: returns its line's figures."""
    import numpy as np

    from featbank.data.tasks import SplitSpec, stratified_parts
    from featbank.heads.registry import HEADS, HeadOptions, fit_head, make_head

    X, y = synthetic_features(n, TASKS[task], dim=dim, seed=seed)
    parts = stratified_parts(y, SplitSpec(seed=seed))
    tr, va, te = (parts == p for p in ("train", "val", "test"))
    name, change = REFERENCES.get(head, (head, None))
    options = HeadOptions(seed=seed)
    pipeline = make_head(name, options)
    if change == "default-forest":
        from sklearn.ensemble import RandomForestClassifier
        pipeline.steps[-1] = ("head", RandomForestClassifier(n_estimators=300, n_jobs=-1,
                                                             random_state=seed))
    elif change:
        pipeline.set_params(**change)
    (X_train, y_train), (X_val, y_val) = (X[tr], y[tr]), (X[va], y[va])
    start = time.perf_counter()  # the fit alone, not the copy of the parts
    tuning = fit_head(pipeline, X_train, y_train, X_val, y_val, grid=HEADS[name].grid_for(options))
    seconds = time.perf_counter() - start
    fitted = pipeline[-1]
    return {"task": task, "head": head, "n": len(y), "classes": TASKS[task], "dim": dim,
            "seconds": seconds,
            "val": float(np.mean(pipeline.predict(X[va]) == y[va])),
            "test": float(np.mean(pipeline.predict(X[te]) == y[te])),
            "chosen": ", ".join(f"{k}={v:g}" for k, v in tuning.chosen.items()) if tuning else "",
            "engine": getattr(fitted, "engine_", ""),
            "peak_gb": peak_rss_gb()}


def main():
    from featbank.heads.registry import resolve_heads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the ~100k images to generate (default: 1.0)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--heads", default="all", help="heads to time (default: all)")
    parser.add_argument("--reference", action="store_true",
                        help="also time scikit-learn's solvers and the default forest")
    parser.add_argument("--dims", default="2048,2048,2048,512",
                        help="feature size of each backbone of the estimated grid (default: "
                             "ResNet50, Inception-V3, Xception, VGG19)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours = resolve_heads(args.heads)
    heads = ours + [r for r, (name, _) in REFERENCES.items() if args.reference and name in ours]
    dims = [int(d) for d in args.dims.split(",")]
    bench = Bench("bench_grid", repeats=args.repeats, settings=vars(args))
    total = {}
    for dim in sorted(set(dims), reverse=True):
        for task in args.tasks.split(","):
            for head in heads:
                results = []

                def cell() -> float:  # a fresh process per run: its peak memory is its own
                    results.append(in_child(run_cell, task, int(100_000 * args.scale), head,
                                            args.seed, dim))
                    return results[-1]["seconds"]
                label = (f"{task} ({TASKS[task]} classes, {int(100_000 * args.scale):,} images: "
                         f"scale {args.scale:g}), {dim}-d, {head}")
                figure = bench.measure(f"{label}: seconds", cell, unit="s", warmup=False)
                r = results[-1]
                for key in ("val", "test", "peak_gb"):
                    bench.record(f"{label}: {key}", [x[key] for x in results],
                                 unit="GB" if key == "peak_gb" else "")
                bench.figures[f"{label}: seconds"].update(chosen=r["chosen"], engine=r["engine"])
                if head in ours:
                    total[task, head, dim] = figure["median"]
    seconds_at = {d: sum(s for (_, _, at), s in total.items() if at == d) for d in set(dims)}
    bench.record(f"estimated grid at scale {args.scale:g} from {len(total)} distinct cells "
                 f"({len(dims)} backbones), minutes (goal at full scale: 30)",
                 [sum(seconds_at[d] for d in dims) / 60], unit="min")
    bench.write()


if __name__ == "__main__":
    main()
