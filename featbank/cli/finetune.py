r"""Fine-tune a backbone on one task of a collection (same saved split as classify.py).

Examples:
    python finetune.py --backbone squeezenet1_1 --task material --init random --epochs 3
    python finetune.py --backbone squeezenet1_1 --task label --collection test \
        --init ../shared/weights/squeezenet1_1-imagenet.pth --epochs 5
    python finetune.py --backbone resnet50 --task type --freeze last:3 --augment --device cuda
    python finetune.py --backbone resnet50 --task artist --collection antwerp \
        --init cache/rijks/finetune/type__resnet50__<id>/trunk.pth     # double fine-tuning

Defaults (Sabatelli et al.): SGD lr 1e-3, Nesterov momentum 0.9, batch 32, no
augmentation, early stopping after 7 epochs without a better validation loss,
the best weights tested. --freeze: none | K (first K stages) | trunk (only the
head) | last:N (the last N units, head included); Cetinic et al.'s scenarios
are none, 1, 2, last:3 and last:1. Run again to resume an interrupted run.
A multi-label task trains a sigmoid per class (binary cross-entropy) and is
scored by mAP. --repeats N trains on N seeded splits, one run and row each.

Writes <cache>/<collection>/finetune/<run>/: history.csv, curves.png, best.pt,
last.pt, trunk.pth (for extract.py --weights), test reports; appends the test
metrics to results.jsonl (the "fine-tuning" column of classify.py's table).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean, stdev

from featbank.api.stages import finetune
from featbank.cli.common import add_options, make_parser, source_of
from featbank.core.settings import defaults
from featbank.data.collection import new_collection_folder, save_metadata
from featbank.data.sources import open_collection
from featbank.finetuning.config import OPTIMIZERS, PRECISIONS, FinetuneConfig
from featbank.models.registry import available_backbones


def get_args_parser() -> argparse.ArgumentParser:
    d = defaults(FinetuneConfig)
    parser = make_parser(__doc__)
    parser.add_argument("--backbone", required=True, help=f"one of {', '.join(available_backbones())}")
    parser.add_argument("--task", required=True, help="the label column to learn")
    parser.add_argument("--init", default=d["init"],
                        help="imagenet (the exact published weights the registry pins), random "
                             "(He-uniform, from scratch) or PATH to a trunk state_dict, an "
                             f"exported trunk or a featbank checkpoint (default: {d['init']})")
    parser.add_argument("--freeze", default=d["freeze"],
                        help=f"none, K, trunk or last:N (default: {d['freeze']})")
    parser.add_argument("--epochs", type=int, default=d["epochs"],
                        help=f"maximum epochs, at least 1 (default: {d['epochs']})")
    parser.add_argument("--patience", type=int, default=d["patience"],
                        help=f"epochs without a better validation loss before stopping "
                             f"(default: {d['patience']})")
    parser.add_argument("--optimizer", default=d["optimizer"], choices=OPTIMIZERS,
                        help="sgd = SGD with Nesterov momentum 0.9 (default: sgd)")
    parser.add_argument("--precision", default=d["precision"], choices=PRECISIONS,
                        help="auto = bf16 autocast on a GPU (fp16 without bf16) and on a CPU "
                             "with native bf16 (AVX512-BF16 or AMX), else fp32 (default: auto)")
    parser.add_argument("--lr", type=float, default=d["lr"],
                        help=f"learning rate (default: {d['lr']:g})")
    parser.add_argument("--head-lr", type=float, default=None,
                        help="learning rate of the new head (default: --lr)")
    add_options(parser, "batch-size", defaults=d)
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size (default: the backbone's, e.g. 224)")
    parser.add_argument("--augment", action="store_true",
                        help="random crop and horizontal flip while training")
    add_options(parser, "balanced", "train-fraction", "split", "resplit", "seed", "repeats", "device",
                "workers", "no-progress", "cache", "source", defaults=d)
    return parser


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    settings = dict(backbone=args.backbone, task=args.task, init=args.init, freeze=args.freeze,
                    epochs=args.epochs, patience=args.patience, optimizer=args.optimizer,
                    lr=args.lr, head_lr=args.head_lr, batch_size=args.batch_size,
                    image_size=args.image_size, augment=args.augment, balanced=args.balanced,
                    train_fraction=args.train_fraction, seed=args.seed, device=args.device,
                    workers=args.workers, cache=args.cache, split=args.split,
                    group_by=args.group_by, min_per_class=args.min_per_class,
                    progress=not args.no_progress, repeats=args.repeats, resplit=args.resplit,
                    precision=args.precision)
    collection, folder = args.collection, None
    if args.images or args.manifest or args.iiif:  # a collection scanned now, then trained on
        found = open_collection(**source_of(args))
        if found.downloads is not None:  # a IIIF collection: its images first
            found.downloads.fetch_all()
        collection, folder = found.name, Path(args.cache) / found.name
    with new_collection_folder(folder or Path(args.cache) / (collection or "demo")):
        if folder is not None:
            save_metadata(found, folder)
        results = finetune(collection=collection, log=lambda m: print(m, file=sys.stderr),
                           **settings)
    from featbank.evaluation.metrics import score_of  # scikit-learn: after the checks

    scores = []
    for result in results:
        row = result.row
        trunk = result.folder / "trunk.pth"
        score, value, (low, high) = score_of(row)
        scores.append(value)
        measures = (f"test mAP {row['mAP']:.3f} [{low:.3f}, {high:.3f}], top-1 "
                    f"{row['top1']:.3f}" if score == "mAP" else
                    f"test top-1 {row['top1']:.3f} [{low:.3f}, {high:.3f}], top-5 "
                    f"{row['top5']:.3f}, balanced {row['balanced_accuracy']:.3f}")
        print(f"{row['backbone']} fine-tuned on {row['task']}: {measures} (best epoch "
              f"{row['best_epoch']} of {row['epochs_run']}); trunk for extract.py --weights: "
              f"{trunk}")
    if len(scores) > 1:
        print(f"over {len(scores)} splits: test {score} {mean(scores):.3f} ± {stdev(scores):.3f} "
              "(mean ± standard deviation)")
