"""Train off-the-shelf heads on cached features; print the paper-style results table.

Examples:
    python classify.py --head all                       # every head, backbone and task
    python classify.py --head svm,softmax --backbone squeezenet1_1 --task label
    python classify.py --head softmax --softmax-recipe paper --collection test
    python classify.py --head logreg --normalize l2 --pca 128 --train-fraction 0.25
    python classify.py --head logreg --backbone "resnet50@imagenet+vgg19@imagenet"
    python classify.py --head softmax --backbone resnet50,vgg19,xception --ensemble

Every head, backbone and fine-tuning run reads the same saved split of a task.
Writes <cache>/<collection>/results.jsonl (one row per model), table.csv and
table.json; fitted heads in heads/, per-class reports and confusion matrices
(CSV and PNG) in reports/. Cells already in results.jsonl are reused.
"""
import sys
from pathlib import Path

from featbank.classification.config import ClassifyConfig
from featbank.cli.common import add_options, cached_collection, make_parser, run, split_spec
from featbank.core.settings import defaults
from featbank.heads.recipes import RECIPES
from featbank.heads.registry import HEADS, NORMALIZATIONS, HeadOptions


def get_args_parser():
    d = defaults(ClassifyConfig)
    parser = make_parser(__doc__)
    parser.add_argument("--head", default=d["heads"],
                        help=f"NAME[,NAME...] or all; one of {', '.join(HEADS)} (default: all)")
    parser.add_argument("--backbone", default=d["backbones"],
                        help="backbones whose cached features to use, comma-separated; A@W+B@W "
                             "concatenates two feature files (W: imagenet, random or a sha256 "
                             "prefix) (default: all)")
    parser.add_argument("--weights", default=d["weights"],
                        help="imagenet, random, sha256:<prefix> or all (default: all)")
    parser.add_argument("--task", default=d["tasks"], help="label column(s) or all (default: all)")
    add_options(parser, "cache", "collection", "split", "seed", defaults=d)
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
    parser.add_argument("--ensemble", action="store_true",
                        help="also average each head's probabilities across the backbones given "
                             "(rows with method 'ensemble', table column '<head> ensemble')")
    return parser


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    config = ClassifyConfig(
        heads=args.head, backbones=args.backbone, weights=args.weights, tasks=args.task,
        cache_root=args.cache, split=split_spec(args),
        options=HeadOptions(normalize=args.normalize, pca=args.pca, balanced=args.balanced,
                            seed=args.seed, softmax_recipe=args.softmax_recipe),
        train_fraction=args.train_fraction, jobs=args.jobs, force=args.force,
        ensemble=args.ensemble, repeats=args.repeats)
    collection = cached_collection(cache=args.cache, collection=args.collection)
    from featbank.classification.grid import classify
    from featbank.evaluation.tables import (
        TABLE_LEGEND,
        build_table,
        table_notes,
        to_markdown,
        write_table,
    )
    from featbank.store.results import load_results

    classify(collection, config, warn=lambda m: print(m, file=sys.stderr))
    folder = Path(args.cache) / collection.name
    rows = load_results(folder, warn=lambda m: print(m, file=sys.stderr))
    repeats = config.repeated()
    columns, records = build_table(rows, split_tag=[c.split.tag for c in repeats],
                                   variant=[c.variant for c in repeats], folder=folder)
    print(to_markdown(columns, records))
    print(f"\n{TABLE_LEGEND}")
    notes = table_notes(columns, records)
    if notes:
        print("\nChosen on the validation split:\n" + "\n".join(f"- {n}" for n in notes))
    csv_path, _ = write_table(folder, columns, records)
    print(f"\ntest top-1; results in {folder / 'results.jsonl'}, table in {csv_path} and .json",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run(main))
