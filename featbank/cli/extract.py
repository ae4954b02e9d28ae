r"""Extract global-average-pooled CNN features of a collection into the HDF5 cache.

Examples:
    python extract.py --backbone squeezenet1_1 --weights random          # demo collection
    python extract.py --backbone squeezenet1_1 \
        --weights ../shared/weights/squeezenet1_1-imagenet.pth \
        --images ../shared/data/heritage/test
    python extract.py --backbone squeezenet1_1 --weights random --layers all  # every depth
    python extract.py --backbone timm:vit_small_patch16_224 --weights random --pool cls \
        --layers all
    python extract.py --backbone vgg19,resnet50,inception_v3,xception \
        --manifest metadata.csv --root images/ --image-column ImageId
    python extract.py --backbone squeezenet1_1 --iiif https://example.org/manifest.json
    python extract.py --backbone all --images paintings/ --device cuda
    python extract.py --backbone resnet50 --images paintings/ --device cuda --decode device
    RAY_ADDRESS=auto python extract.py --backbone vgg19,resnet50 --images /shared/museum \
        --engine ray                                   # on a Ray cluster (docs/ray.md)

Re-running skips images already in the cache, extracts again the images whose
bytes changed and takes out the rows of images no longer in the collection; an
interrupted run resumes.
Output: <cache>/<collection>/features/<backbone>__<weights>.h5 (docs/design.md),
with --layers one more file per layer (<backbone>__<weights>__<layer>.h5),
undecodable images in <cache>/<collection>/skipped.csv.
"""
from __future__ import annotations

import argparse

from featbank.api.stages import extract
from featbank.cli.common import add_options, make_parser, source_of
from featbank.core.settings import defaults
from featbank.core.text import count
from featbank.extraction.config import (
    DECODES,
    DTYPES,
    ENGINES,
    JPEG_DECODERS,
    POOLS,
    PRECISIONS,
    ExtractConfig,
)
from featbank.models.registry import available_backbones


def get_args_parser() -> argparse.ArgumentParser:
    d = defaults(ExtractConfig)
    parser = make_parser(__doc__)
    parser.add_argument("--backbone", required=True,
                        help=f"NAME[,NAME...] or all; one of {', '.join(available_backbones())}")
    parser.add_argument("--weights", default=d["weights"],
                        help="imagenet (the exact published weights the registry pins; see docs/extract.md), random (seeded) or PATH to a state_dict or a trunk "
                             f"exported by finetune.py (default: {d['weights']})")
    parser.add_argument("--layers", default=d["layers"],
                        help="the trunk's layers to cache from one forward pass, each in a "
                             "feature file of its own: final (the trunk's output), all, or "
                             "stage names and numbers from 1, e.g. layer3,final (an unknown "
                             "one lists the trunk's) (default: final)")
    parser.add_argument("--pool", default=d["pool"], choices=POOLS,
                        help="how a token network's (ViT, DeiT, EVA, ...) outputs become "
                             "vectors: cls token, mean of the patch tokens, gap (mean of "
                             "every token) or model (the network's own); recorded in the "
                             "file. Feature maps are always average-pooled (default: auto = "
                             "model)")
    add_options(parser, "cache", "source", "batch-size", "workers", "device", defaults=d)
    _add_compute_options(parser, d)
    parser.add_argument("--engine", default=d["engine"], choices=ENGINES,
                        help="local: this machine; ray: Ray Data over a Ray cluster "
                             "(pip install 'featbank[ray]') (default: local)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join, e.g. ray://head:10001 or auto "
                             "(default: $RAY_ADDRESS, else a Ray started on this machine)")
    parser.add_argument("--ray-actors", type=int, default=None,
                        help="trunk actors for --engine ray (default: one per GPU in the "
                             "cluster, one if it has none)")
    parser.add_argument("--force-new", action="store_true",
                        help="when a feature file's rows were made otherwise (weights, "
                             "preprocessing, decoding, precision, storage, library release), "
                             "keep it in features/replaced/ and start a new one, instead of "
                             "stopping")
    parser.add_argument("--verify-images", action="store_true",
                        help="read every image and compare its sha256 with the one its row "
                             "was computed from, not only its size and modification time; "
                             "a changed image is extracted again")
    parser.add_argument("--prune", action="store_true",
                        help="rewrite each feature file's rows into one shard, freeing the "
                             "space of rows taken out (images no longer in the collection) "
                             "or replaced (images that changed)")
    add_options(parser, "no-progress", defaults=d)
    return parser


def _add_compute_options(parser: argparse.ArgumentParser, d: dict) -> None:
    """How rows are computed and stored: storage type, precision, compilation, decoding."""
    parser.add_argument("--dtype", default=d["dtype"], choices=DTYPES,
                        help=f"storage type of the features (default: {d['dtype']})")
    parser.add_argument("--precision", default=d["precision"], choices=PRECISIONS,
                        help="compute precision; auto = bf16 autocast on a GPU (fp16 without "
                             "bf16) and on a CPU with native bf16 (AVX512-BF16 or AMX), kept "
                             "when the first batch's features stay within 3%% of fp32, else "
                             "fp32; every precision but an explicit fp32 on a CPU runs "
                             "channels-last (fp32 keeps earlier runs' numbers) (default: auto)")
    parser.add_argument("--compile", action="store_true",
                        help="run the trunks through torch.compile: faster batches after a "
                             "compile paid on the first one (see docs/extract.md for when it "
                             "pays)")
    parser.add_argument("--decode", default=d["decode"], choices=DECODES,
                        help="where images are decoded: cpu = Pillow in the worker processes; "
                             "device = the JPEGs nvJPEG takes on the GPU, the rest by Pillow; "
                             "device+pillow = besides, Pillow takes the share of the JPEGs the "
                             "workers have time for, so which decoder made a row follows "
                             "timing (experimental, see docs/gpu.md); auto = cpu for now "
                             "(default: auto)")
    parser.add_argument("--jpeg-decoder", default=d["jpeg_decoder"],
                        choices=JPEG_DECODERS,
                        help="with --decode device, the library that calls nvJPEG: auto = "
                             "torchcodec when installed (pip install 'featbank[gpu]'), else "
                             "torchvision's decoder, deprecated since torchvision 0.29 "
                             "(default: auto)")


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    source = source_of(args)
    source["iiif_politeness"] = source.pop("politeness")
    reports = extract(**source, backbone=args.backbone, weights=args.weights,
                      progress=not args.no_progress, batch_size=args.batch_size,
                      workers=args.workers, device=args.device, dtype=args.dtype,
                      precision=args.precision, decode=args.decode,
                      jpeg_decoder=args.jpeg_decoder, engine=args.engine,
                      ray_address=args.ray_address, ray_actors=args.ray_actors,
                      force_new=args.force_new, layers=args.layers, pool=args.pool,
                      verify_images=args.verify_images, prune=args.prune,
                      compile=args.compile)
    for report in reports:
        undecodable = (f"; {count(report.n_skipped, 'image')} could not be decoded (listed "
                       f"with the reason in {report.skipped_csv})" if report.n_skipped else "")
        layer = "" if report.layer == "final" else f" {report.layer}"
        changes = "".join(f", {n:,} {what}" for n, what in (
            (report.n_changed, "replaced (their images changed)"),
            (report.n_removed, "taken out (no longer in the collection)")) if n)
        print(f"{report.backbone}{layer}: {count(report.n_rows, 'row')} in {report.path} "
              f"({report.n_added:,} added now{changes}){undecodable} [{report.seconds:.1f} s]")
    if reports and reports[0].device_decoded is not None:
        print(f"{count(reports[0].device_decoded, 'image')} decoded on the device "
              f"({reports[0].jpeg_decoder}), the others by Pillow")
    if reports and reports[0].fetched is not None:
        stored = reports[0].n_rows - reports[0].fetched
        earlier = f", {stored:,} stored by earlier runs" if stored > 0 else ""
        print(f"{count(reports[0].fetched, 'image')} fetched through IIIF now{earlier}; "
              f"catalogue in {reports[0].skipped_csv.parent}/iiif/canvases.csv")
    if reports and reports[0].ignored:
        print(f"{count(reports[0].ignored, 'hidden or system file')} left out (.DS_Store, "
              "Thumbs.db, __MACOSX/, dotfiles)")

