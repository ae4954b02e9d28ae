"""What the command-line scripts share: error handling and collection lookup.

Library code raises ``ValueError`` / ``FileNotFoundError`` with a message that
says what to do; ``run`` turns them into one line on stderr and a non-zero
exit (set ``FEATBANK_DEBUG=1`` for the traceback).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .collection import Collection, from_folder, from_manifest, load_metadata
from .demo import demo_collection

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def run(main, argv=None) -> int:
    """Call ``main(argv)``; bad input -> one line and exit 2, Ctrl-C -> exit 130."""
    try:
        main(argv)
        return 0
    except KeyboardInterrupt:
        print("interrupted: everything finished so far is kept; run the same command "
              "again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as err:
        if os.environ.get("FEATBANK_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def add_collection_args(parser, *, images: bool) -> None:
    parser.add_argument("--cache", default="cache", help="cache root (default: ./cache)")
    parser.add_argument("--collection", default=None,
                        help="collection name in the cache (default: the folder or "
                             "manifest name when --images/--manifest is given, else the "
                             "collection extracted last, else the built-in demo)")
    if images:
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--images", metavar="DIR",
                            help="folder with one sub-folder per class (task 'label')")
        source.add_argument("--manifest", metavar="CSV",
                            help="CSV with an image column and label columns")
        parser.add_argument("--root", metavar="DIR", default=None,
                            help="folder the manifest's image paths are relative to "
                                 "(default: the CSV's folder)")
        parser.add_argument("--image-column", default=None,
                            help="manifest column naming the images (default: guessed, "
                                 "e.g. ImageId)")
        parser.add_argument("--label-columns", default=None,
                            help="comma-separated manifest columns to use as tasks "
                                 "(default: every other named column)")


def collection_for_extraction(*, cache: str, collection: str | None, images: str | None,
                              manifest: str | None, root: str | None = None,
                              image_column: str | None = None,
                              label_columns: str | None = None) -> Collection:
    """The collection named on the command line, scanned from its images."""
    if images:
        found = from_folder(images, name=collection)
    elif manifest:
        columns = [c.strip() for c in label_columns.split(",")] if label_columns else None
        found = from_manifest(manifest, root=root, image_column=image_column,
                              label_columns=columns, name=collection)
    elif collection in (None, "demo"):
        return demo_collection(cache)
    else:
        return load_metadata(Path(cache) / collection)
    _check_same_root(Path(cache) / found.name, found)
    return found


def _check_same_root(folder: Path, found: Collection) -> None:
    try:
        known = load_metadata(folder)
    except FileNotFoundError:
        return
    if known.root.resolve() != found.root.resolve():
        raise ValueError(f"collection {found.name!r} in {folder.parent} holds images of "
                         f"{known.root}, not {found.root}; pass --collection NAME")


def cached_collection(*, cache: str, collection: str | None) -> Collection:
    """A collection already extracted: by name, else the newest, else the demo."""
    if collection is None:
        collection = latest_collection(cache) or "demo"
        print(f"collection: {collection} (pass --collection NAME for another)", file=sys.stderr)
    return load_metadata(Path(cache) / collection)


def latest_collection(cache: str) -> str | None:
    runs = sorted(Path(cache).glob("*/extract_config.json"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent.name if runs else None
