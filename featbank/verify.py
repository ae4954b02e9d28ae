"""Check every feature file of a cache, and repair the damaged ones.

Usage:
    python -m featbank.verify CACHE              # one line per problem; exit 1 if any
    python -m featbank.verify --repair CACHE     # keep every readable row, drop the rest

A file is damaged when it cannot be opened (truncated, empty), lacks part of the
feature-file contract, or maps rows onto shards that are missing, unreadable or
short; a killed run's unreadable parts count too. Repairing keeps every row that
can be read, moves what cannot be used to ``features/damaged/<time>/`` (nothing
is deleted) and leaves the dropped rows for the next ``extract.py`` run, which
computes them again. ``extract.py`` repairs the files it extracts into the same
way before it starts.
"""
from __future__ import annotations

import sys
from pathlib import Path

from featbank.cli.common import Parser, make_parser, run
from featbank.core.errors import MissingFile
from featbank.store.health import problems
from featbank.store.repair import repair


def get_args_parser() -> Parser:
    parser = make_parser(__doc__)
    parser.add_argument("cache", metavar="CACHE", help="the cache root (e.g. ./cache)")
    parser.add_argument("--repair", action="store_true",
                        help="repair damaged files: keep every readable row, drop the rest")
    return parser


def feature_files_of(cache: Path) -> list[Path]:
    """Every feature file of every collection of ``cache`` (with a killed run's parts)."""
    if not cache.is_dir():
        raise MissingFile(f"cache {cache} does not exist")
    found = set(cache.glob("*/features/*.h5"))
    found |= {p.with_name(p.name.removesuffix(".parts")) for p in cache.glob("*/features/*.h5.parts")}
    return sorted(found)


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    damaged = 0
    for path in feature_files_of(Path(args.cache)):
        if args.repair:
            repaired = repair(path)
            if repaired:
                print(repaired)
            damaged += bool(problems(path))
        else:
            for problem in problems(path):
                print(f"{path}: {problem}")
                damaged += 1
    if damaged:
        raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(run(main))
