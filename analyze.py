"""Analyse a collection's cached features: retrieval, CKA, 2-D maps, export.

Examples:
    python analyze.py retrieve --backbone squeezenet1_1 --task label --k 10
    python analyze.py retrieve --backbone resnet50 --weights imagenet --query my_painting.jpg
    python analyze.py cka --features cache/test/features/*.h5
    python analyze.py map --backbone squeezenet1_1 --task label
    python analyze.py export --backbone squeezenet1_1 --format parquet

Each sub-command writes a JSON file with its figures and settings, plus
pictures, to <cache>/<collection>/analysis/<sub-command>/, and prints where.
--weights picks among a backbone's feature files (imagenet, random or a
sha256 prefix); it may be left out when there is only one.
"""
import json
import sys

from featbank.backbones import available_backbones
from featbank.cli import Parser, add_options, cached_collection, make_parser, run, split_spec
from featbank.config import (EXPORT_FORMATS, MAP_METHODS, CkaConfig, ExportConfig, MapConfig,
                             RetrieveConfig, defaults)


def _features_options(parser, d, *, task_required: bool) -> None:
    parser.add_argument("--backbone", required=True,
                        help=f"one of {', '.join(available_backbones())}")
    parser.add_argument("--weights", default="all",
                        help="imagenet, random or sha256:<prefix> (default: the only feature "
                             "file of the backbone)")
    if task_required is not None:
        parser.add_argument("--task", required=task_required, default=None,
                            help="label column of the collection")
    add_options(parser, "cache", "collection", defaults=d)


def get_args_parser() -> Parser:
    parser = make_parser(__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=Parser)

    d = defaults(RetrieveConfig)
    retrieve = commands.add_parser("retrieve", help="nearest neighbours: precision@k, mAP@k, "
                                   "contact sheets; or look up any image (--query)")
    _features_options(retrieve, d, task_required=False)
    retrieve.add_argument("--k", type=int, default=d["k"],
                          help=f"neighbours per query (default: {d['k']})")
    retrieve.add_argument("--query", nargs="+", metavar="IMAGE", default=[],
                          help="image files to look up in the whole collection, run through "
                               "the same trunk and preprocessing")
    retrieve.add_argument("--weights-file", default=None,
                          help="with --query: the weights file the features were extracted "
                               "with, when it has moved")
    retrieve.add_argument("--sheet", type=int, default=d["sheet"],
                          help=f"queries on the contact sheet (default: {d['sheet']})")
    retrieve.add_argument("--device", default="cpu", help="device for --query (default: cpu)")
    add_options(retrieve, "split", "seed", "no-progress", defaults=d)

    d = defaults(CkaConfig)
    cka = commands.add_parser("cka", help="linear CKA between feature files")
    cka.add_argument("--features", nargs="+", required=True, metavar="H5",
                     help="feature files (at least two; a file may be given twice)")
    cka.add_argument("--debiased", action="store_true",
                     help="the debiased estimator (unbiased HSIC), for small samples")
    add_options(cka, "cache", "no-progress", defaults=d)

    d = defaults(MapConfig)
    maps = commands.add_parser("map", help="2-D map (UMAP or t-SNE) coloured by a task")
    _features_options(maps, d, task_required=True)
    maps.add_argument("--method", default=d["method"], choices=MAP_METHODS,
                      help="auto: UMAP when umap-learn is installed, else t-SNE (default: auto)")
    maps.add_argument("--max-points", type=int, default=d["max_points"],
                      help=f"map a class-stratified sample of this many (default: {d['max_points']})")
    add_options(maps, "seed", "no-progress", defaults=d)

    d = defaults(ExportConfig)
    export = commands.add_parser("export", help="features with ids and labels as .npy or Parquet")
    _features_options(export, d, task_required=None)
    export.add_argument("--format", default=d["format"], choices=EXPORT_FORMATS,
                        help="npy (features, ids, labels.csv) or parquet (default: npy)")
    return parser


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.command == "cka":
        from featbank.analysis.cka import cka

        report = cka(CkaConfig(features=args.features, debiased=args.debiased,
                               cache_root=args.cache, progress=not args.no_progress), warn=say)
        width = max(len(n) for n in report["names"])
        for name, row in zip(report["names"], report["cka"]):
            print(f"{name:<{width}}  " + "  ".join(f"{v:.3f}" for v in row))
        return _done(report, ["heatmap"])
    if args.command == "retrieve":
        config = RetrieveConfig(
            backbone=args.backbone, task=args.task, weights=args.weights, k=args.k,
            queries=args.query, weights_file=args.weights_file, sheet=args.sheet,
            split=split_spec(args), device=args.device, cache_root=args.cache,
            progress=not args.no_progress)
    elif args.command == "map":
        config = MapConfig(backbone=args.backbone, task=args.task, weights=args.weights,
                           method=args.method, max_points=args.max_points, seed=args.seed,
                           cache_root=args.cache, progress=not args.no_progress)
    else:
        config = ExportConfig(backbone=args.backbone, weights=args.weights, format=args.format,
                              cache_root=args.cache)
    collection = cached_collection(cache=args.cache, collection=args.collection)
    if args.command == "retrieve" and config.queries:
        from featbank.analysis.retrieve import lookup

        report = lookup(collection, config, warn=say)
        for result in report["queries"]:
            print(result["image"])
            for n in result["neighbours"]:
                print(f"  {n['similarity']:.3f}  {n['id']}  {json.dumps(n['labels'])}")
        return _done(report, ["html"])
    if args.command == "retrieve":
        from featbank.analysis.retrieve import retrieve

        report = retrieve(collection, config, warn=say)
        k = report["k"]
        print(f"{report['task']} / {report['backbone']} ({report['weights'][:19]}): "
              f"precision@{k} {report['precision_at_k']:.3f}, mAP@{k} {report['map_at_k']:.3f} "
              f"({report['n_queries']} test queries, {report['n_gallery']} train+val images; "
              f"chance {report['chance_precision_at_k']:.3f})")
        return _done(report, ["contact_sheet", "html"])
    if args.command == "map":
        from featbank.analysis.maps import make_map

        report = make_map(collection, config, warn=say)
        print(f"{report['method']} map of {report['n_points']} images; silhouette of "
              f"{report['task']} on the map: {report['silhouette_2d']}")
        return _done(report, ["png", "html", "points_csv"])
    from featbank.analysis.export import export

    report = export(collection, config, warn=say)
    print(f"{report['n_rows']} rows x {report['feature_dim']} -> " + ", ".join(report["files"]))
    return _done(report, [])


def _done(report: dict, pictures: list[str]) -> None:
    written = [report["json"]] + [report[k] for k in pictures if report.get(k)]
    print("written: " + ", ".join(written), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run(main))
