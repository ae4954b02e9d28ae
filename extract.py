"""Extract global-average-pooled CNN features of a collection into the HDF5 cache.

Examples:
    python extract.py --backbone squeezenet1_1 --weights random          # demo collection
    python extract.py --backbone squeezenet1_1 \
        --weights ../shared/weights/squeezenet1_1-imagenet.pth \
        --images ../shared/data/heritage/test
    python extract.py --backbone vgg19,resnet50,inception_v3,xception \
        --manifest metadata.csv --root images/ --image-column ImageId
    python extract.py --backbone all --images paintings/ --device cuda
    python extract.py --backbone resnet50 --images paintings/ --device cuda --decode device
    RAY_ADDRESS=auto python extract.py --backbone vgg19,resnet50 --images /shared/museum \
        --engine ray                                   # on a Ray cluster (README, "Ray")

Re-running skips images already in the cache; an interrupted run resumes.
Output: <cache>/<collection>/features/<backbone>__<weights>.h5 (see DESIGN.md),
undecodable images in <cache>/<collection>/skipped.csv.
"""
import argparse
import sys

from featbank.backbones import available_backbones
from featbank.cli import add_collection_args, collection_for_extraction, run
from featbank.extract import ExtractConfig, extract


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True,
                        help=f"NAME[,NAME...] or all; one of {', '.join(available_backbones())}")
    parser.add_argument("--weights", default="imagenet",
                        help="imagenet, random (seeded) or PATH to a state_dict (default: imagenet)")
    add_collection_args(parser, images=True)
    defaults = ExtractConfig(backbones=[])
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"images per forward pass (default: {defaults.batch_size})")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help=f"decoding processes, 0 = in the main process (default: {defaults.workers})")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                        help="storage type of the features (default: float32)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="compute precision; auto = bf16/fp16 autocast on a GPU when the "
                             "features stay within 1%% of fp32, else fp32 (default: auto)")
    parser.add_argument("--decode", default="auto", choices=["auto", "cpu", "device"],
                        help="where images are decoded: cpu = Pillow in the worker processes; "
                             "device = JPEGs by nvJPEG on the GPU (experimental, see README); "
                             "auto = cpu for now (default: auto)")
    parser.add_argument("--engine", default="local", choices=["local", "ray"],
                        help="local: this machine; ray: Ray Data over a Ray cluster "
                             "(pip install 'featbank[ray]') (default: local)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join, e.g. ray://head:10001 or auto "
                             "(default: $RAY_ADDRESS, else a Ray started on this machine)")
    parser.add_argument("--ray-actors", type=int, default=None,
                        help="trunk actors for --engine ray (default: one per GPU in the "
                             "cluster, one if it has none)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    collection = collection_for_extraction(
        cache=args.cache, collection=args.collection, images=args.images,
        manifest=args.manifest, root=args.root, image_column=args.image_column,
        label_columns=args.label_columns)
    config = ExtractConfig(backbones=args.backbone, weights=args.weights, cache_root=args.cache,
                           batch_size=args.batch_size, workers=args.workers, device=args.device,
                           dtype=args.dtype, precision=args.precision, decode=args.decode,
                           engine=args.engine, ray_address=args.ray_address,
                           ray_actors=args.ray_actors,
                           progress=not args.no_progress)
    for report in extract(collection, config):
        print(f"{report.backbone}: {report.n_rows} rows ({report.n_new} new, "
              f"{report.n_skipped} undecodable) -> {report.path} [{report.seconds:.1f} s]")


if __name__ == "__main__":
    sys.exit(run(main))
