"""Fine-tune a backbone on one task of a collection (same saved split as classify.py).

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

Writes <cache>/<collection>/finetune/<run>/: history.csv, curves.png, best.pt,
last.pt, trunk.pth (for extract.py --weights), test reports; appends the test
metrics to results.jsonl (the "fine-tuning" column of classify.py's table).
"""
import argparse
import sys
from pathlib import Path

from featbank.backbones import available_backbones
from featbank.cli import add_collection_args, cached_collection, collection_for_extraction, run
from featbank.collection import save_metadata
from featbank.finetune import FinetuneConfig, finetune
from featbank.tasks import SplitSpec


def get_args_parser() -> argparse.ArgumentParser:
    d = FinetuneConfig(backbone="", task="")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True, help=f"one of {', '.join(available_backbones())}")
    parser.add_argument("--task", required=True, help="the label column to learn")
    parser.add_argument("--init", default=d.init,
                        help="imagenet, random (He-uniform, from scratch) or PATH to a trunk "
                             "state_dict or featbank checkpoint (default: imagenet)")
    parser.add_argument("--freeze", default=d.freeze,
                        help="none, K, trunk or last:N (default: none)")
    parser.add_argument("--epochs", type=int, default=d.epochs,
                        help=f"maximum epochs (default: {d.epochs})")
    parser.add_argument("--patience", type=int, default=d.patience,
                        help=f"epochs without a better validation loss before stopping "
                             f"(default: {d.patience})")
    parser.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "adam", "rmsprop"],
                        help="sgd = SGD with Nesterov momentum 0.9 (default: sgd)")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default: {d.lr})")
    parser.add_argument("--head-lr", type=float, default=None,
                        help="learning rate of the new head (default: --lr)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help=f"(default: {d.batch_size})")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size (default: the backbone's, e.g. 224)")
    parser.add_argument("--augment", action="store_true",
                        help="random crop and horizontal flip while training")
    parser.add_argument("--balanced", action="store_true", help="class-balanced loss")
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="stratified fraction of the training split (default: 1)")
    parser.add_argument("--split", default="80/10/10", help="train/val/test (default: 80/10/10)")
    parser.add_argument("--min-per-class", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--workers", type=int, default=d.workers,
                        help=f"decoding processes (default: {d.workers})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_collection_args(parser, images=True)
    return parser


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    config = FinetuneConfig(
        backbone=args.backbone, task=args.task, init=args.init, freeze=args.freeze,
        epochs=args.epochs, patience=args.patience, optimizer=args.optimizer, lr=args.lr,
        head_lr=args.head_lr, batch_size=args.batch_size, image_size=args.image_size,
        augment=args.augment, balanced=args.balanced, train_fraction=args.train_fraction,
        seed=args.seed, device=args.device, workers=args.workers, cache_root=args.cache,
        split=SplitSpec.parse(args.split, seed=args.seed, min_per_class=args.min_per_class),
        progress=not args.no_progress)
    if args.images or args.manifest:
        collection = collection_for_extraction(
            cache=args.cache, collection=args.collection, images=args.images,
            manifest=args.manifest, root=args.root, image_column=args.image_column,
            label_columns=args.label_columns)
        save_metadata(collection, Path(args.cache) / collection.name)
    else:
        collection = cached_collection(cache=args.cache, collection=args.collection)
    result = finetune(collection, config, log=lambda m: print(m, file=sys.stderr))
    row = result.row
    print(f"{row['backbone']} fine-tuned on {row['task']}: test top-1 {row['top1']:.3f}, "
          f"top-5 {row['top5']:.3f}, balanced {row['balanced_accuracy']:.3f} "
          f"(best epoch {row['best_epoch']} of {row['epochs_run']}); "
          f"trunk for extract.py --weights: {row['trunk_path']}")


if __name__ == "__main__":
    sys.exit(run(main))
