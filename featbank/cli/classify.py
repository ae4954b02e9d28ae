"""Train off-the-shelf heads on cached features; print the paper-style results table.

Examples:
    python classify.py --head all                       # every head, backbone and task
    python classify.py --head svm,softmax --backbone squeezenet1_1 --task label
    python classify.py --head softmax --softmax-recipe paper --collection test
    python classify.py --head logreg --normalize l2 --pca 128 --train-fraction 0.25
    python classify.py --head logreg --backbone "resnet50@imagenet+vgg19@imagenet"
    python classify.py --head softmax --backbone resnet50,vgg19,xception --ensemble
    python classify.py --head logreg --layers all   # every layer extract.py --layers cached

Every head, backbone and fine-tuning run reads the same saved split of a task.
Writes <cache>/<collection>/results.jsonl (one row per model), table.csv and
table.json; fitted heads in heads/, per-class reports and confusion matrices
(CSV and PNG) in reports/; with results on several layers, the layer curve
(analyze.py layer-curve) in analysis/layer-curve/. Cells already in
results.jsonl are reused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from featbank.api.analyses import layer_curve, shot_curve
from featbank.api.grid import classify, table
from featbank.classification.config import CALIBRATIONS, ClassifyConfig
from featbank.core.errors import BadInput
from featbank.cli.common import add_options, make_parser
from featbank.core.settings import defaults
from featbank.heads.recipes import RECIPES
from featbank.heads.registry import HEADS, NORMALIZATIONS
from featbank.store.results import load_results


def get_args_parser() -> argparse.ArgumentParser:
    d = defaults(ClassifyConfig)
    parser = make_parser(__doc__)
    parser.add_argument("--head", default=d["heads"],
                        help=f"NAME[,NAME...] or all; one of {', '.join(HEADS)} (default: all)")
    parser.add_argument("--backbone", default=d["backbones"],
                        help="backbones whose cached features to use, comma-separated; A@W+B@W "
                             "concatenates two feature files (W: imagenet, random or a sha256 "
                             "prefix) (default: all)")
    parser.add_argument("--weights", default=d["weights"],
                        help="imagenet, random, sha256:<prefix>, the weights file extract.py was "
                             "given, or all (default: all)")
    parser.add_argument("--layers", default=d["layers"],
                        help="the layers whose feature files to train on (extract.py "
                             "--layers): final (the trunks' outputs), all, or layer names and "
                             "numbers (default: final)")
    parser.add_argument("--task", default=d["tasks"], help="label column(s) or all (default: all)")
    add_options(parser, "cache", "collection", "split", "resplit", "seed", defaults=d)
    parser.add_argument("--normalize", default="standard", choices=NORMALIZATIONS,
                        help="feature normalisation before the head (default: standard)")
    parser.add_argument("--pca", type=int, default=None,
                        help="PCA to K dimensions first (default: none)")
    add_options(parser, "balanced", "train-fraction", "repeats", defaults=d)
    parser.add_argument("--softmax-recipe", default="fast", choices=tuple(RECIPES),
                        help="fast (default) or the paper's RMSprop/batch-32/patience-7 recipe")
    parser.add_argument("--jobs", type=int, default=d["jobs"],
                        help=f"cells trained in parallel (default: {d['jobs']}, the CPU cores)")
    parser.add_argument("--force", action="store_true", help="recompute cells already stored")
    parser.add_argument("--shots", default=None, metavar="K[,K...]",
                        help="also train each head on k training images per class for each "
                             "k (seeded draws, the same for every backbone; --repeats draws "
                             "of each on the one split, validation and test unchanged), and "
                             "draw the k-shot curve (default: none)")
    parser.add_argument("--calibrate", default=None, choices=CALIBRATIONS,
                        help="recalibrate each head's probabilities on the validation part "
                             "(a setting of the cell: its own table column) (default: none)")
    parser.add_argument("--reliability", action="store_true",
                        help="write a reliability diagram per cell (reports/*_reliability.png)")
    parser.add_argument("--ensemble", action="store_true",
                        help="also average each head's probabilities across the backbones given "
                             "(rows with method 'ensemble', table column '<head> ensemble')")
    return parser


def _shots(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise BadInput(f"--shots {text!r}: give whole numbers, e.g. 1,4,16") from None


def _without_leaks(args, settings: dict) -> None:
    """Beside the table: each score without the test images that have a near-duplicate in
    train or val, where ``analyze.py leaks`` found some on the table's split."""
    from featbank.api.quality import without_leaks

    keep = ("cache", "split", "seed", "group_by", "min_per_class")
    frame = without_leaks(args.collection, **{k: settings[k] for k in keep})
    if frame.empty:
        return
    print("\nWithout the test images that have a near-duplicate in train or val "
          "(analyze.py leaks):")
    for r in frame.itertuples():
        low, high = r.ci_without_leaks
        print(f"- {r.task} / {r.backbone} ({r.weights}) / {r.head or r.method}: top-1 "
              f"{r.top1:.3f} on {r.n_test}, {r.top1_without_leaks:.3f} [{low:.3f}, {high:.3f}] "
              f"without the {r.n_left_out} leaked")


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    settings = dict(cache=args.cache, split=args.split, seed=args.seed,
                    group_by=args.group_by, min_per_class=args.min_per_class,
                    normalize=args.normalize, pca=args.pca, balanced=args.balanced,
                    softmax_recipe=args.softmax_recipe, train_fraction=args.train_fraction,
                    repeats=args.repeats, calibrate=args.calibrate)
    classify(collection=args.collection, head=args.head, backbone=args.backbone, task=args.task,
             weights=args.weights, jobs=args.jobs, force=args.force, ensemble=args.ensemble,
             layers=args.layers, resplit=args.resplit, warn=say, shots=_shots(args.shots),
             reliability=args.reliability, **settings)
    from featbank.evaluation.members import describe, versus_best_member  # scikit-learn
    from featbank.evaluation.tables import TABLE_LEGEND

    result = table(args.collection, warn=say, **settings)
    print(result.markdown())
    print(f"\n{TABLE_LEGEND}")
    notes = result.notes()
    if notes:
        print("\nChosen on the validation split:\n" + "\n".join(f"- {n}" for n in notes))
    folder = Path(args.cache) / result.collection
    combinations = versus_best_member(load_results(folder), folder=folder)
    if combinations:
        print("\nCombinations against their best member (paired test on the same test "
              "images):\n" + "\n".join(f"- {describe(c)}" for c in combinations))
    _without_leaks(args, settings)
    csv_path, _ = result.write(folder)
    print(f"\ntest top-1; results in {folder / 'results.jsonl'}, table in {csv_path} and .json",
          file=sys.stderr)
    if args.shots:
        curves = shot_curve(result.collection, head=args.head, **settings)
        print("k-shot curve: " + ", ".join(c["plot"] for c in curves), file=sys.stderr)
    if args.layers != "final" and "layer" in result.columns:
        curves = layer_curve(result.collection, head=args.head, **settings)
        print("layer curve: " + ", ".join(c["plot"] for c in curves), file=sys.stderr)
