"""Analyse a collection: retrieval, CKA, 2-D maps and export on cached features;
near-duplicates, leaks between split parts, likely label issues, outliers and what
to annotate first; layers, top images and saliency maps inside the networks.

Examples:
    python analyze.py retrieve --backbone squeezenet1_1 --task label --k 10
    python analyze.py retrieve --backbone resnet50 --weights imagenet --query my_painting.jpg
    python analyze.py cka --features cache/test/features/*.h5
    python analyze.py map --backbone squeezenet1_1 --task label
    python analyze.py export --backbone squeezenet1_1 --format parquet
    python analyze.py duplicates --backbone squeezenet1_1
    python analyze.py leaks --backbone squeezenet1_1 --task label
    python analyze.py label-issues --backbone squeezenet1_1 --task label
    python analyze.py select --backbone squeezenet1_1 --n 100
    python analyze.py layers --backbone resnet50 --weights imagenet --compare cache/wikiart/finetune/RUN
    python analyze.py layer-curve --head logreg    # after extract.py/classify.py --layers all
    python analyze.py top-images --backbone resnet50 --weights imagenet --compare RUN --k 9
    python analyze.py saliency --run cache/wikiart/finetune/RUN --method gradcam --n 8 --sanity

Each sub-command writes a JSON file with its figures and settings, plus
pictures, to <cache>/<collection>/analysis/<sub-command>/, and prints where.
For retrieve, map and export, --weights picks among a backbone's feature
files (imagenet, random or a sha256 prefix); it may be left out when there is
only one. For layers, top-images and saliency, --weights and --compare name a
trunk: imagenet, random, a weights file or a fine-tuning run folder.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from featbank.analysis.config import (
    EXPORT_FORMATS,
    MAP_METHODS,
    SALIENCY_METHODS,
    CkaConfig,
    DuplicatesConfig,
    ExportConfig,
    LayersConfig,
    MapConfig,
    RetrieveConfig,
    SaliencyConfig,
    TopImagesConfig,
)
from featbank.api import analyses, trunks
from featbank.cli.analyze_quality import COMMANDS as QUALITY
from featbank.cli.analyze_quality import add_commands as add_quality_commands
from featbank.cli.analyze_quality import add_pair_options, pair_keywords
from featbank.cli.common import Parser, add_options, make_parser, split_of
from featbank.core.errors import BadInput
from featbank.core.settings import defaults
from featbank.core.text import count
from featbank.heads.registry import linear_heads
from featbank.models.registry import available_backbones

TRUNK_HELP = "imagenet, random, a weights file or a fine-tuning run folder"


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _features_options(parser, d, *, task_required: bool | None) -> None:
    """One feature file of the cache (retrieve, map, export)."""
    parser.add_argument("--backbone", required=True,
                        help=f"one of {', '.join(available_backbones())}")
    parser.add_argument("--weights", default="all",
                        help="imagenet, random, sha256:<prefix> or the weights file extract.py "
                             "was given (default: the only feature "
                             "file of the backbone)")
    if task_required is not None:
        parser.add_argument("--task", required=task_required, default=None,
                            help="label column of the collection")
    add_options(parser, "cache", "collection", defaults=d)


def _trunk_options(parser, d, *, compare_required: bool) -> None:
    """Two trunks of one backbone, run over collection images (layers, top-images)."""
    parser.add_argument("--backbone", required=True,
                        help=f"one of {', '.join(available_backbones())}")
    parser.add_argument("--weights", required=True, help=TRUNK_HELP)
    parser.add_argument("--compare", required=compare_required, default=None,
                        help=f"{'the other' if compare_required else 'a second'} trunk: "
                             f"{TRUNK_HELP}")
    add_options(parser, "cache", "collection", "seed", "batch-size", "workers", "device",
                "no-progress", defaults=d)


def _add_retrieve(commands) -> None:
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


def _add_cka(commands) -> None:
    d = defaults(CkaConfig)
    cka = commands.add_parser("cka", help="linear CKA between feature files")
    cka.add_argument("--features", nargs="+", required=True, metavar="H5",
                     help="feature files (at least two; a file may be given twice)")
    cka.add_argument("--debiased", action="store_true",
                     help="the debiased estimator (unbiased HSIC), for small samples")
    add_options(cka, "cache", "no-progress", defaults=d)


def _add_map(commands) -> None:
    d = defaults(MapConfig)
    maps = commands.add_parser("map", help="2-D map (UMAP or t-SNE) coloured by a task")
    _features_options(maps, d, task_required=True)
    maps.add_argument("--method", default=d["method"], choices=MAP_METHODS,
                      help="auto: UMAP when umap-learn is installed, else t-SNE (default: auto)")
    maps.add_argument("--max-points", type=int, default=d["max_points"],
                      help=f"map a class-stratified sample of this many (default: {d['max_points']})")
    add_options(maps, "seed", "no-progress", defaults=d)


def _add_export(commands) -> None:
    d = defaults(ExportConfig)
    export = commands.add_parser("export", help="features with ids and labels as .npy, "
                                                "Parquet or one self-contained HDF5 file")
    _features_options(export, d, task_required=None)
    export.add_argument("--format", default=d["format"], choices=EXPORT_FORMATS,
                        help="npy (features, ids, labels.csv), parquet, or hdf5 (one "
                             "self-contained feature file with its labels, to hand on) "
                             "(default: npy)")


def _add_duplicates(commands) -> None:
    d = defaults(DuplicatesConfig)
    dup = commands.add_parser("duplicates", help="groups of near-duplicate images (CSV, contact "
                              "sheets, HTML), or which images another collection already holds")
    _features_options(dup, d, task_required=None)
    add_pair_options(dup, d)
    dup.add_argument("--across", metavar="A,B", default=None,
                     help="images of collection A that duplicate images of collection B "
                          "(both extracted with this backbone and weights)")
    dup.add_argument("--sheet", type=int, default=d["sheet"],
                     help=f"groups on the contact sheet (default: {d['sheet']})")
    add_options(dup, "no-progress", defaults=d)


def _add_layers(commands) -> None:
    d = defaults(LayersConfig)
    layers = commands.add_parser("layers", help="per stage: relative weight distance and CKA "
                                 "between two trunks (what fine-tuning changed)")
    _trunk_options(layers, d, compare_required=True)
    layers.add_argument("--n", type=int, default=d["n"],
                        help=f"collection images for CKA, a seeded sample (default: {d['n']})")


def _add_layer_curve(commands) -> None:
    curve = commands.add_parser("layer-curve", help="test score ± interval against depth, a "
                                "line per backbone, weights and head (classify.py --layers)")
    curve.add_argument("--head", default="all",
                       help="heads (table columns) to draw, comma-separated (default: all)")
    curve.add_argument("--task", default="all", help="tasks to draw (default: all)")
    add_options(curve, "cache", "collection", "split", "seed", "repeats",
                defaults={"cache_root": "cache", "repeats": 1})


def _add_top_images(commands) -> None:
    d = defaults(TopImagesConfig)
    top = commands.add_parser("top-images", help="each channel's most activating images: class "
                              "entropy, and overlap between two trunks")
    _trunk_options(top, d, compare_required=False)
    top.add_argument("--stage", default=d["stage"],
                     help="last (default: the vectors the feature cache holds), a number from "
                          "1 (nearest the input) or a stage name")
    top.add_argument("--k", type=int, default=d["k"], help=f"images per channel (default: {d['k']})")
    top.add_argument("--task", default=None,
                     help="label column for the class entropy (default: the first)")
    top.add_argument("--n", type=int, default=d["n"],
                     help="images run through the trunks when the feature cache cannot serve "
                          f"(default: {d['n']}; 0 = all)")


def _add_saliency(commands) -> None:
    d = defaults(SaliencyConfig)
    sal = commands.add_parser("saliency", help="saliency maps (Grad-CAM, VisualBackProp, "
                              "integrated gradients) of a fine-tuned run or a linear head")
    sal.add_argument("--run", default=None, help="a fine-tuning run folder (trunk.pth, best.pt)")
    sal.add_argument("--backbone", default=None,
                     help="or a trunk (with --weights, --task and --head): "
                          f"one of {', '.join(available_backbones())}")
    sal.add_argument("--weights", default=d["weights"], help=f"{TRUNK_HELP} (default: imagenet)")
    sal.add_argument("--task", default=None, help="the task the stored head was trained on")
    sal.add_argument("--head", default=None, choices=linear_heads(),
                     help="the off-the-shelf head classify.py stored")
    sal.add_argument("--method", default=d["method"], choices=SALIENCY_METHODS,
                     help="gradcam, vbp (VisualBackProp) or ig (integrated gradients); "
                          f"default: {d['method']}")
    sal.add_argument("--n", type=int, default=d["n"],
                     help=f"test images of the task's split, a seeded sample (default: {d['n']})")
    sal.add_argument("--images", nargs="+", default=[], metavar="IMAGE",
                     help="image files or collection ids instead of test images")
    sal.add_argument("--sanity", action="store_true",
                     help="model-randomisation test (Adebayo et al. 2018): rank correlation "
                          "with the maps of a re-initialised copy")
    sal.add_argument("--steps", type=int, default=d["steps"],
                     help=f"integrated gradients: steps on the path (default: {d['steps']})")
    add_options(sal, "cache", "collection", "split", "seed", "device", "no-progress", defaults=d)


def get_args_parser() -> Parser:
    parser = make_parser(__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=Parser)
    for add in (_add_retrieve, _add_cka, _add_map, _add_export, _add_duplicates, _add_layers,
                _add_layer_curve, _add_top_images, _add_saliency):
        add(commands)
    add_quality_commands(commands)
    return parser


# -- each sub-command: call the API, print what it found ------------------------------


def _retrieve(args) -> tuple[dict, list[str]]:
    report = analyses.retrieve(args.backbone, args.task, collection=args.collection,
                               weights=args.weights, k=args.k, queries=args.query,
                               cache=args.cache, warn=_say, weights_file=args.weights_file,
                               sheet=args.sheet, device=args.device,
                               progress=not args.no_progress, **split_of(args))
    if args.query:
        for result in report["queries"]:
            print(result["image"])
            for n in result["neighbours"]:
                print(f"  {n['similarity']:.3f}  {n['id']}  {json.dumps(n['labels'])}")
        return report, ["html"]
    k = report["k"]
    print(f"{report['task']} / {report['backbone']} ({report['weights'][:19]}): "
          f"precision@{k} {report['precision_at_k']:.3f}, mAP@{k} {report['map_at_k']:.3f} "
          f"({report['n_queries']} test queries, {report['n_gallery']} train+val images; "
          f"chance {report['chance_precision_at_k']:.3f})")
    return report, ["contact_sheet", "html"]


def _cka(args) -> tuple[dict, list[str]]:
    report = analyses.cka_files(args.features, debiased=args.debiased, cache=args.cache, warn=_say)
    width = max(len(n) for n in report["names"])
    for name, row in zip(report["names"], report["cka"]):
        print(f"{name:<{width}}  " + "  ".join(f"{v:.3f}" for v in row))
    return report, ["heatmap"]


def _map(args) -> tuple[dict, list[str]]:
    report = analyses.map2d(args.backbone, args.task, collection=args.collection,
                            weights=args.weights, method=args.method, cache=args.cache,
                            warn=_say, max_points=args.max_points, seed=args.seed,
                            progress=not args.no_progress)
    silhouette = report["silhouette_2d"]
    print(f"{report['method']} map of {count(report['n_points'], 'image')}; silhouette of "
          f"{report['task']} on the map: "
          f"{'undefined' if silhouette is None else format(silhouette, '.3f')}")
    return report, ["png", "html", "points_csv"]


def _export(args) -> tuple[dict, list[str]]:
    report = analyses.export(args.backbone, collection=args.collection, weights=args.weights,
                             format=args.format, cache=args.cache, warn=_say)
    print(f"{count(report['n_rows'], 'row')} x {report['feature_dim']} -> "
          + ", ".join(report["files"]))
    return report, []


def _duplicates(args) -> tuple[dict, list[str]]:
    collection, across = args.collection, None
    if args.across:
        parts = [p.strip() for p in args.across.split(",")]
        if len(parts) != 2 or not all(parts):
            raise BadInput(f"--across {args.across!r}: name two collections, A,B")
        collection, across = parts
    report = analyses.duplicates(args.backbone, collection=collection, weights=args.weights,
                                 across=across, cache=args.cache, warn=_say, sheet=args.sheet,
                                 progress=not args.no_progress, **pair_keywords(args))
    if across:
        print(f"{count(report['n_duplicated'], 'image')} of {report['collection']} "
              f"({report['n_images']:,}) duplicate images of {across}: "
              f"{count(report['n_pairs'], 'pair')} at cosine >= {report['threshold']:g}")
        return report, ["csv"]
    print(f"{count(report['n_groups'], 'group')} of near-duplicates (cosine >= "
          f"{report['threshold']:g}) hold {count(report['n_images_in_groups'], 'image')} of "
          f"{report['n_images']:,}; largest: {', '.join(map(str, report['largest'])) or '-'}; "
          f"{count(report['n_rotated'], 'rotated pair')}"
          + (f", {report['n_rejected']} of {report['n_candidates']} candidates rejected by "
             "local features" if report["verified"] else ", not verified by local features"))
    return report, ["csv", "png", "html"]


def _trunk_pass(args) -> dict:
    return {"collection": args.collection, "cache": args.cache, "warn": _say,
            "seed": args.seed, "batch_size": args.batch_size, "workers": args.workers,
            "device": args.device, "progress": not args.no_progress}


def _layers(args) -> tuple[dict, list[str]]:
    report = trunks.layers(args.backbone, args.weights, args.compare, n=args.n,
                             **_trunk_pass(args))
    print(f"{report['backbone']}: {report['label']} vs {report['compare_label']} on "
          f"{count(report['n_images'], 'image')}")
    print(f"{'stage':<28} {'weight distance':>15} {'CKA':>6}")
    for s in report["stages"]:
        cka = "-" if s["cka"] is None else f"{s['cka']:.3f}"
        print(f"{s['name'][:28]:<28} {s['weight_distance']:>15.3g} {cka:>6}")
    return report, ["png"]


def _layer_curve(args) -> tuple[dict, list[str]]:
    reports = analyses.layer_curve(args.collection, head=args.head, task=args.task,
                                   cache=args.cache, warn=_say, repeats=args.repeats,
                                   **split_of(args))
    for report in reports:
        print(f"{report['task']}: test {report['metric']} by layer")
        for line in report["lines"]:
            best = max(line["points"], key=lambda p: p["score"])
            print(f"  {line['label']}: " + ", ".join(
                f"{p['name']} {p['score']:.3f}" for p in line["points"])
                + f"; best {best['name']}")
    return {"json": ", ".join(r["json"] for r in reports),
            "png": ", ".join(r["plot"] for r in reports)}, ["png"]


def _top_images(args) -> tuple[dict, list[str]]:
    report = trunks.top_images(args.backbone, args.weights, compare=args.compare,
                                 stage=args.stage, k=args.k, task=args.task, n=args.n,
                                 **_trunk_pass(args))
    line = (f"{report['stage']}: {report['channels']} channels, top {report['k']} of "
            f"{count(report['n_images'], 'image')} ({report['source']}); class entropy "
            f"{report['entropy']['mean']:.3f} bits (random images: "
            f"{report['label_entropy']:.3f})")
    if "overlap" in report:
        line += (f"; with {report['compare_label']}: entropy "
                 f"{report['entropy_compare']['mean']:.3f}, top-{report['k']} overlap "
                 f"{report['overlap']['mean']:.3f}")
    print(line)
    return report, ["png"]


def _saliency(args) -> tuple[dict, list[str]]:
    cache, collection = args.cache, args.collection
    if args.run and collection is None:  # the run's own collection and cache
        folder = Path(args.run).resolve()
        if (folder.parents[1] / "collection.json").is_file():
            cache, collection = str(folder.parents[2]), folder.parents[1].name
    report = trunks.saliency(run=args.run, backbone=args.backbone, weights=args.weights,
                               task=args.task, head=args.head, method=args.method,
                               collection=collection, cache=cache, warn=_say, n=args.n,
                               images=args.images, sanity=args.sanity, steps=args.steps,
                               device=args.device, progress=not args.no_progress,
                               **split_of(args))
    accuracy = "" if report["accuracy"] is None else f"; accuracy {report['accuracy']:.2f}"
    line = (f"{report['method']} maps of {count(report['n_images'], 'image')} ({report['source']}, "
            f"{report['backbone']}, task {report['task']}{accuracy})")
    if report.get("sanity_rank_correlation") is not None:
        line += (f"; sanity rank correlation {report['sanity_rank_correlation']:.3f} over "
                 f"{report['sanity_images']} of {count(report['n_images'], 'image')}")
    elif "sanity_rank_correlation" in report:
        line += "; sanity rank correlation undefined (every map is constant)"
    print(line)
    return report, ["png"]


COMMANDS = {"retrieve": _retrieve, "cka": _cka, "map": _map, "export": _export,
            "duplicates": _duplicates,
            "layers": _layers, "layer-curve": _layer_curve, "top-images": _top_images,
            "saliency": _saliency}


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.command in QUALITY:
        report, pictures = QUALITY[args.command](args, _say)
    else:
        report, pictures = COMMANDS[args.command](args)
    written = [report["json"]] + [report[k] for k in pictures if report.get(k)]
    print("written: " + ", ".join(written), file=sys.stderr)
