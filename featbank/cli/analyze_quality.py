"""``analyze.py``'s sub-commands that say what is wrong with a collection: label-issues,
leaks, outliers, select; and the options near-duplicate pairs share with duplicates."""
from __future__ import annotations

from featbank.analysis.config import LabelIssuesConfig, LeaksConfig, OutliersConfig
from featbank.analysis.geometry import MIN_INLIERS
from featbank.api import quality
from featbank.cli.common import add_options, split_of
from featbank.core.settings import defaults
from featbank.core.text import count
from featbank.models.registry import available_backbones


def add_pair_options(parser, d) -> None:
    """How near-duplicate pairs are found and confirmed (duplicates, leaks)."""
    parser.add_argument("--threshold", type=float, default=d["threshold"],
                        help=f"cosine similarity from which two images are candidates "
                             f"(default: {d['threshold']:g}, chosen on bench/bench_duplicates.py)")
    parser.add_argument("--k", type=int, default=d["k"],
                        help=f"neighbours each image is compared with (default: {d['k']})")
    parser.add_argument("--no-rotations", dest="rotations", action="store_false",
                        help="do not query each image turned by 90, 180 and 270 degrees (which "
                             "runs the trunk three more times over the collection, once)")
    parser.add_argument("--verify", default="auto", choices=("auto", "on", "off"),
                        help="confirm each candidate by local features and RANSAC (OpenCV; "
                             "auto: when installed)")
    parser.add_argument("--min-inliers", type=int, default=MIN_INLIERS,
                        help=f"RANSAC inliers a confirmed pair has (default: {MIN_INLIERS})")
    parser.add_argument("--weights-file", default=None,
                        help="the weights file the features were extracted with, when it has "
                             "moved (to run the turned images)")
    parser.add_argument("--device", default="cpu",
                        help="device the turned images run on (default: cpu)")


def pair_keywords(args) -> dict:
    return {"threshold": args.threshold, "k": args.k, "rotations": args.rotations,
            "verify": args.verify, "min_inliers": args.min_inliers,
            "weights_file": args.weights_file, "device": args.device}


def _backbone(parser) -> None:
    parser.add_argument("--backbone", required=True,
                        help=f"one of {', '.join(available_backbones())}")
    parser.add_argument("--weights", default="all",
                        help="imagenet, random, sha256:<prefix> or the weights file extract.py "
                             "was given (default: the only feature file of the backbone)")


def add_commands(commands) -> None:
    d = defaults(LabelIssuesConfig)
    issues = commands.add_parser("label-issues", help="likely cataloguing errors: out-of-fold "
                                 "probabilities of a head ranked by cleanlab (CSV, sheet, HTML)")
    _backbone(issues)
    issues.add_argument("--task", required=True, help="label column of the collection")
    issues.add_argument("--head", default=d["head"],
                        help="a head with probabilities: logreg, softmax, rf, knn "
                             f"(default: {d['head']})")
    issues.add_argument("--folds", type=int, default=d["folds"],
                        help=f"K-fold over train+val (default: {d['folds']})")
    issues.add_argument("--sheet", type=int, default=d["sheet"],
                        help=f"images on the contact sheet (default: {d['sheet']})")
    add_options(issues, "cache", "collection", "split", "seed", defaults=d)

    d = defaults(LeaksConfig)
    leaks = commands.add_parser("leaks", help="near-duplicate pairs whose images fall in two "
                                "parts of a task's saved split (CSV, counts, sheet)")
    _backbone(leaks)
    leaks.add_argument("--task", required=True, help="the task whose saved split is checked")
    add_pair_options(leaks, d)
    leaks.add_argument("--sheet", type=int, default=d["sheet"],
                       help=f"pairs on the contact sheet (default: {d['sheet']})")
    add_options(leaks, "cache", "collection", "split", "seed", "no-progress", defaults=d)

    d = defaults(OutliersConfig)
    outliers = commands.add_parser("outliers", help="each image's mean cosine distance to its "
                                   "nearest neighbours, the farthest first (CSV, sheet)")
    _backbone(outliers)
    outliers.add_argument("--k", type=int, default=d["k"],
                          help=f"neighbours the score averages over (default: {d['k']})")
    add_options(outliers, "cache", "collection", defaults=d)
    select = commands.add_parser("select", help="a diverse, representative set to annotate "
                                 "first, by k-center greedy (CSV, sheet)")
    _backbone(select)
    select.add_argument("--n", type=int, required=True, help="images to pick")
    select.add_argument("--labelled", metavar="FILE", default=None,
                        help="ids already annotated, one a line: the picks start from them")
    add_options(select, "cache", "collection", defaults=d)



def _label_issues(args, warn) -> tuple[dict, list[str]]:
    frame = quality.label_issues(args.backbone, args.task, collection=args.collection,
                                 weights=args.weights, head=args.head, folds=args.folds,
                                 cache=args.cache, sheet=args.sheet, warn=warn, **split_of(args))
    report = frame.attrs["report"]
    print(f"{report['task']} / {report['backbone']}: "
          f"{count(report['n_issues'], 'likely label issue')} "
          f"among {report['n_images']:,} images (out-of-fold {report['head']} accuracy "
          f"{report['out_of_fold_accuracy']:.3f}); worst first:")
    for row in frame.head(10).itertuples():
        print(f"  {row.score:.3f}  {row.id}  given {row.given!r}, suggested {row.suggested!r}")
    return report, ["csv", "png", "html"]


def _leaks(args, warn) -> tuple[dict, list[str]]:
    frame = quality.leaks(args.backbone, args.task, collection=args.collection,
                          weights=args.weights, cache=args.cache, sheet=args.sheet,
                          progress=not args.no_progress, warn=warn, **pair_keywords(args),
                          **split_of(args))
    report = frame.attrs["report"]
    parts = ", ".join(f"{k} {v}" for k, v in report["by_parts"].items()) or "none"
    print(f"{report['task']} ({report['split_tag']}): {count(report['n_leaks'], 'pair')} of "
          f"near-duplicates across parts ({parts}); {report['n_test_leaked']} of "
          f"{report['n_test']} test images have a copy outside the test part")
    for r in report["without_leaks"]:
        print(f"  {r['backbone']} / {r['head'] or r['method']}: top-1 {r['top1']:.3f}, "
              f"{r['top1_without_leaks']:.3f} without the {r['n_left_out']} leaked")
    return report, ["csv", "png"]


def _outliers(args, warn) -> tuple[dict, list[str]]:
    frame = quality.outliers(args.backbone, collection=args.collection, weights=args.weights,
                             k=args.k, cache=args.cache, warn=warn)
    report = frame.attrs["report"]
    print(f"{report['n_images']:,} images by mean cosine distance to their {report['k']} "
          f"nearest (median {report['score_median']:.3f}); the farthest:")
    for row in frame.head(10).itertuples():
        print(f"  {row.score:.3f}  {row.id}")
    return report, ["csv", "png"]


def _select(args, warn) -> tuple[dict, list[str]]:
    frame = quality.select(args.backbone, args.n, collection=args.collection,
                           weights=args.weights, labelled=args.labelled, cache=args.cache,
                           warn=warn)
    report = frame.attrs["report"]
    radius = "-" if report["radius"] is None else f"{report['radius']:.3f}"
    print(f"{count(report['n_picked'], 'image')} to annotate first of {report['n_images']:,} "
          f"(k-center greedy); every image within cosine distance {radius} of a pick")
    return report, ["csv", "png"]


COMMANDS = {"label-issues": _label_issues, "leaks": _leaks, "outliers": _outliers,
            "select": _select}
