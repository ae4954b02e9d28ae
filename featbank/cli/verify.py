"""Check every feature file of a cache; repair the damaged ones, prune what is unused.

Examples:
    python verify.py cache                # one line per problem; exit 1 if any
    python verify.py --repair cache       # keep every readable row, drop the rest
    python verify.py --prune cache        # also take out rows of images no longer in
                                          # their collection, and free their space

A file is damaged when its main file cannot be opened (truncated, empty), lacks part
of the feature-file contract, or maps rows onto a layout or shards that are missing,
unreadable or short; a killed run's unreadable parts count too. Repairing keeps
every row that can be read (a damaged main file is rebuilt from its shards), moves
what cannot be used to features/damaged/<time>/ (nothing is deleted) and leaves the
dropped rows for the next extract.py run, which computes them again. extract.py
repairs the files it extracts into the same way before it starts. Each file is
checked under its extraction lock: a run writing it is waited for.
"""
from __future__ import annotations

from pathlib import Path

import h5py

from featbank.cli.common import Parser, make_parser
from featbank.core.errors import MissingFile
from featbank.core.fileio import hold_lock
from featbank.data.collection import load_metadata
from featbank.store.health import problems
from featbank.store.provenance import plain_attrs
from featbank.store.repair import repair
from featbank.store.writer import FeatureWriter, lock_of


def get_args_parser() -> Parser:
    parser = make_parser(__doc__)
    parser.add_argument("cache", metavar="CACHE", help="the cache root (e.g. ./cache)")
    parser.add_argument("--repair", action="store_true",
                        help="repair damaged files: keep every readable row, drop the rest")
    parser.add_argument("--prune", action="store_true",
                        help="repair, then take out the rows of images no longer in their "
                             "collection (as its last extract.py saw it) and rewrite each "
                             "file's rows into one shard, freeing the space of the rest")
    return parser


def feature_files_of(cache: Path) -> list[Path]:
    """Every feature file of every collection of ``cache`` (with a killed run's parts)."""
    if not cache.is_dir():
        raise MissingFile(f"cache {cache} does not exist")
    found = set(cache.glob("*/features/*.h5"))
    found |= {p.with_name(p.name.removesuffix(".parts")) for p in cache.glob("*/features/*.h5.parts")}
    return sorted(found)


def _prune(path: Path) -> int:
    """Take out rows of images no longer in the collection and free the space of every row
    the file no longer maps; returns the rows taken out."""
    with h5py.File(path, "r") as f:
        attrs = plain_attrs(dict(f.attrs))
        ids = set(f["ids"].asstr()[:])
    try:
        wanted = set(load_metadata(path.parents[1]).ids)
    except FileNotFoundError:
        wanted = ids  # no collection recorded: nothing is known to have left it
    out = FeatureWriter(path, attrs)
    out.remove(sorted(ids - wanted))
    out.prune()
    out.merge()
    return len(ids - wanted)


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    damaged = 0
    for path in feature_files_of(Path(args.cache)):
        with hold_lock(lock_of(path), on_wait=lambda p=path: print(
                f"waiting for the run that is writing {p}")):
            if args.repair or args.prune:
                repaired = repair(path)
                if repaired:
                    print(repaired)
                found = problems(path)
                damaged += bool(found)
                if args.prune and path.is_file() and not found:
                    gone = _prune(path)
                    print(f"{path}: pruned" + (f"; {gone:,} rows of images no longer in the "
                                               "collection taken out" if gone else ""))
            else:
                for problem in problems(path):
                    print(f"{path}: {problem}")
                    damaged += 1
    if damaged:
        raise SystemExit(1)
