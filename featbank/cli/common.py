"""What the command-line scripts share: error handling and the options they have in common.

Library code raises a ``FeatbankError`` (``core.errors``) for what the user can
fix, with a message that says what to do; ``run`` turns it into one line on
stderr and exit 2, as it does for what the file system refuses (a full disk, a
read-only cache, a missing path). Anything else is featbank's own bug: one line
``internal error: ...`` and exit 3 (``FEATBANK_DEBUG=1`` shows the traceback of
either). Options used by several scripts are declared here once
(:func:`add_options`), with one help text. Nothing here imports torch: a bad
argument fails in well under two seconds.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys

from featbank.core.errors import BadInput, FeatbankError
from featbank.core.settings import default_workers

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
# What the file system says that the user can act on: a path that is not there, no
# permission, a full disk or quota, a read-only file system.
USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT,
               errno.EROFS, errno.ENOTDIR, errno.EISDIR}


def run(main, argv=None) -> int:
    """Call ``main(argv)``: what the user can fix -> one line and exit 2; featbank's own
    bugs -> one line saying so and exit 3; Ctrl-C -> exit 130."""
    try:
        main(argv)
        return 0
    except KeyboardInterrupt:
        print("interrupted: everything finished so far is kept; run the same command "
              "again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into ``head``, which has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # noqa: BLE001 - every error ends as one line, never a traceback
        if os.environ.get("FEATBANK_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        if _users(err):
            print(f"error: {message}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"internal error: {type(err).__name__}: {message} (please report it; "
              "FEATBANK_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _users(err: Exception) -> bool:
    """Whether the user can fix ``err``: featbank says so, or the file system does."""
    return isinstance(err, FeatbankError) or (isinstance(err, OSError)
                                              and err.errno in USER_ERRNOS)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: --batch-size: must be at least 1, not 0``)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def make_parser(doc: str) -> Parser:
    """The parser of a script whose module docstring is ``doc`` (first paragraph = description)."""
    return Parser(description=doc.split("\n\n")[0], epilog="\n\n".join(doc.split("\n\n")[1:]),
                  formatter_class=argparse.RawDescriptionHelpFormatter)


# -- options shared by the scripts: declared once, same help, same checks ----------------

def _int(low: int):
    """argparse type: an integer of at least ``low`` (checked again by the configs)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    parse.__name__ = "integer"
    return parse


def add_options(parser: argparse.ArgumentParser, *names: str, defaults: dict) -> None:
    """Declare the shared options ``names`` with their one help text each.

    defaults : field name -> default of the script's config (``config.defaults``).
    """
    for name in names:
        _OPTIONS[name](parser, defaults)


def _cache(parser, d):
    parser.add_argument("--cache", default=d.get("cache_root", "cache"),
                        help="cache root (default: ./cache)")


def _collection(parser, d):
    parser.add_argument("--collection", default=None,
                        help="collection name in the cache (default: the collection extracted "
                             "last, else the built-in demo)")


def _source(parser, d):
    """--images / --manifest and the manifest's columns; --collection names the result."""
    parser.add_argument("--collection", default=None,
                        help="collection name in the cache (default: the folder or manifest "
                             "name when --images/--manifest is given, else the collection "
                             "extracted last, else the built-in demo)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", metavar="DIR",
                        help="folder with one sub-folder per class (task 'label')")
    source.add_argument("--manifest", metavar="CSV|XML|DIR",
                        help="CSV with an image column and label columns; or Dublin Core XML: "
                             "one file of records (e.g. an OAI-PMH dump) or a folder of XML "
                             "records, one per image (each dc: element becomes a task)")
    source.add_argument("--iiif", metavar="URL|FILE", default=None,
                        help="a IIIF manifest or collection (Presentation 2.1 or 3.0): one "
                             "image per canvas, fetched politely into the cache, its "
                             "metadata labels as tasks (docs/iiif.md)")
    parser.add_argument("--iiif-size", metavar="PX", type=_int(16), default=None,
                        help="shorter side of the IIIF images to fetch (default: what the "
                             "run's largest input needs)")
    parser.add_argument("--offline", action="store_true",
                        help="with --iiif: fetch nothing, use what earlier runs stored")
    parser.add_argument("--iiif-rate", metavar="N", type=float, default=8.0,
                        help="with --iiif: requests a second to one server, at most "
                             "(default: 8; a server on this machine is not paced)")
    parser.add_argument("--iiif-connections", metavar="N", type=_int(1), default=4,
                        help="with --iiif: requests in flight to one server (default: 4)")
    parser.add_argument("--root", metavar="DIR", default=None,
                        help="folder the manifest's image paths are relative to "
                             "(default: the CSV's folder)")
    parser.add_argument("--image-column", default=None,
                        help="manifest column naming the images (default: guessed, e.g. ImageId)")
    parser.add_argument("--label-columns", default=None,
                        help="comma-separated manifest columns (or dc: elements) to use as "
                             "tasks (default: every other named column)")
    parser.add_argument("--attributes", metavar="CSV", default=None,
                        help="iMet-style labels.csv (attribute_id,attribute_name such as "
                             "medium::paper); --manifest is then train.csv (id,attribute_ids) "
                             "and each prefix becomes a multi-label task")
    parser.add_argument("--multi-label", metavar="COL[,COL]", default=None,
                        help="manifest columns whose cells list several labels (scored by mAP)")
    parser.add_argument("--label-separator", default=";",
                        help="separator between the labels of a --multi-label cell (default: ;)")


def _device(parser, d):
    parser.add_argument("--device", default=d["device"],
                        help=f"auto, cpu, cuda or cuda:N; auto = cuda when torch sees one "
                             f"(default: {d['device']})")


def _workers(parser, d):
    parser.add_argument("--workers", type=_int(0), default=d["workers"],
                        help="image-decoding processes, 0 = in the main process (default: one "
                             "fewer than the cores, at most 8 when the model runs on the CPU, "
                             "none there on one or two cores, and 32 with a GPU; here "
                             f"{default_workers('cpu')} and "
                             f"{default_workers('cuda')})")


def _batch_size(parser, d):
    default = d["batch_size"] if d["batch_size"] is not None else (
        "8 images of 224 px on a CPU, fewer of larger ones (its caches), 32 on a GPU")
    parser.add_argument("--batch-size", type=_int(1), default=d["batch_size"],
                        help=f"images per forward pass (default: {default})")


def _seed(parser, d):
    parser.add_argument("--seed", type=_int(0), default=d.get("seed", 0),
                        help="seed of the split and of everything random in training "
                             f"(default: {d.get('seed', 0)})")


def _repeats(parser, d):
    parser.add_argument("--repeats", type=_int(1), default=d.get("repeats", 1),
                        help="run on N splits seeded --seed, --seed + 1, ..., each its own "
                             "results row; the table shows mean ± standard deviation "
                             "(default: 1)")


def _split(parser, d):
    parser.add_argument("--split", default="80/10/10",
                        help="train/val/test percentages of each class (default: 80/10/10)")
    parser.add_argument("--min-per-class", type=_int(3), default=None,
                        help="classes with fewer images are left out (default: enough for one "
                             "image in every part, 10 for 80/10/10)")
    parser.add_argument("--group-by", metavar="COLUMN", default=None,
                        help="keep all images sharing a value of this collection column (an "
                             "artist, an object) inside one of train/val/test; duplicates (or "
                             "duplicates:BACKBONE): each group of near-duplicates (default: none)")


def _resplit(parser, d):
    parser.add_argument("--resplit", action="store_true",
                        help="make a fresh split of each task instead of following the saved "
                             "one (which keeps every image's part as the collection changes); "
                             "results on the old split are recomputed")


def _train_fraction(parser, d):
    parser.add_argument("--train-fraction", type=float, default=d["train_fraction"],
                        help="stratified fraction of the training part to train on "
                             f"(default: {d['train_fraction']:g})")


def _balanced(parser, d):
    parser.add_argument("--balanced", action="store_true",
                        help="weigh classes inversely to their size in the loss")


def _no_progress(parser, d):
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


_OPTIONS = {"cache": _cache, "collection": _collection, "source": _source, "device": _device,
            "workers": _workers, "batch-size": _batch_size, "seed": _seed, "split": _split,
            "train-fraction": _train_fraction, "balanced": _balanced,
            "no-progress": _no_progress, "repeats": _repeats, "resplit": _resplit}


def split_of(args) -> dict:
    """The split options (``add_options(..., "split", "seed")``) as API keywords."""
    return {"split": args.split, "seed": args.seed, "group_by": args.group_by,
            "min_per_class": args.min_per_class}


def source_of(args) -> dict:
    """The collection options as keywords of :func:`open_collection`."""
    return {"cache": args.cache, "collection": args.collection, "images": args.images,
            "manifest": args.manifest, "root": args.root, "image_column": args.image_column,
            "label_columns": args.label_columns, "attributes": args.attributes,
            "multi_label": args.multi_label, "separator": args.label_separator,
            "iiif": args.iiif, "iiif_size": args.iiif_size, "offline": args.offline,
            "politeness": _politeness(args)}


def _politeness(args):
    if not args.iiif_rate > 0:
        raise BadInput(f"--iiif-rate must be above 0, not {args.iiif_rate}")
    from featbank.data.fetch import Politeness

    return Politeness(per_host=args.iiif_connections, rate=args.iiif_rate)


