"""Whether a feature file is whole, checked cheaply: no vector is read.

A file is damaged when its main file is empty or cannot be opened (truncated),
lacks a dataset of the contract, has as many ids as rows of features in
disagreement, or when its layout (the file its ``features`` link to) is missing or
unreadable, or a shard it maps is missing, empty, unreadable or shorter than the
rows mapped onto it (plain h5py would read those rows as NaN). A killed run's parts
that cannot be read are damage too. Every reader checks before it reads
(:func:`raise_if_damaged`); ``extract.py`` repairs (:mod:`featbank.store.repair`),
and ``python verify.py`` (:mod:`featbank.cli.verify`) checks a whole cache.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import h5py

from featbank.core.errors import DamagedFile
from featbank.core.fileio import first_line
from featbank.store.layout import FORMAT, read_segments, shards_folder

DATASETS = ("features", "ids", "skipped_ids", "skipped_reasons")


def problems(path: str | Path) -> list[str]:
    """What is wrong with the feature file at ``path`` (empty when it is whole, or absent)."""
    path = Path(path)
    found = [f"part {p.name} cannot be read" for p in unreadable_parts(path)]
    if not path.exists():
        return found
    if path.stat().st_size == 0:
        return found + ["is empty (0 bytes)"]
    try:
        with h5py.File(path, "r") as f:
            return found + _file_problems(f, path)
    except OSError as err:
        return found + [f"cannot be opened ({first_line(err)})"]


def main_problems(found: list[str]) -> bool:
    """Whether ``problems`` found the main file itself damaged (not only shards or parts)."""
    return any(not p.startswith(("its shard ", "part ")) for p in found)


def _file_problems(f: h5py.File, path: Path) -> list[str]:
    if f.attrs.get("format") == FORMAT:
        layout = shards_folder(path) / str(f.attrs.get("layout", ""))
        problem = _layout_problem(layout)
        if problem:
            return [problem]
    missing = [name for name in DATASETS if f.get(name) is None]
    if missing:
        return [f"lacks its {', '.join(missing)} dataset{'s' * (len(missing) > 1)}"]
    features, n = f["features"], f["ids"].shape[0]
    if features.shape[0] != n:
        return [f"holds {n} ids but {features.shape[0]} rows of features"]
    if f.attrs.get("format") == FORMAT:
        segments = read_segments(shards_folder(path) / str(f.attrs["layout"]))
        return _shard_problems(shards_folder(path), segments)
    if not features.is_virtual:
        return []
    found = []
    for source in features.virtual_sources():  # a file of format 1: sources beside the file
        (first, _), (last, _) = source.src_space.get_select_bounds()
        problem = shard_problem(path.parent / source.file_name, last + 1)
        if problem:
            found.append(problem)
    return found


def _layout_problem(layout: Path) -> str | None:
    if not layout.is_file():
        return f"its layout {layout.name} is missing (was the file copied without its " \
               f"{layout.parent.name} folder?)"
    try:
        read_segments(layout)
    except (OSError, KeyError, ValueError) as err:
        return f"its layout {layout.name} cannot be read ({first_line(err)})"
    return None


def _shard_problems(folder: Path, segments) -> list[str]:
    needed: dict[str, int] = {}
    for shard, _, stop in segments:
        needed[shard] = max(needed.get(shard, 0), stop)
    return [p for p in (shard_problem(folder / name, rows) for name, rows in needed.items()) if p]


def shard_problem(shard: Path, rows: int) -> str | None:
    """What is wrong with a shard that must hold ``rows`` rows, or None."""
    if not shard.is_file():
        return f"its shard {shard.name} is missing"
    if shard.stat().st_size == 0:
        return f"its shard {shard.name} is empty (0 bytes)"
    try:
        with h5py.File(shard, "r") as f:
            held = f["features"].shape[0] if "features" in f else 0
    except OSError as err:
        return f"its shard {shard.name} cannot be opened ({first_line(err)})"
    if held < rows:
        return f"its shard {shard.name} holds {held} rows where the file maps {rows}"
    return None


def unreadable_parts(path: Path) -> list[Path]:
    """A killed run's parts of the file at ``path`` that cannot be read (not a whole .npz)."""
    parts = path.with_name(path.name + ".parts")
    found = sorted(parts.glob("*.npz")) if parts.is_dir() else []
    return [part for part in found if not zipfile.is_zipfile(part)]


def raise_if_damaged(path: str | Path) -> None:
    """Refuse to read a damaged feature file, naming it, the damage and the fix."""
    found = problems(path)
    if found:
        raise DamagedFile(f"{path} {'; '.join(found)}: run extract.py again for this "
                          "collection and backbone (it repairs the file, keeping every "
                          "readable row), or python verify.py --repair CACHE")
