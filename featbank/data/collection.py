"""Image collections: which images, under which ids, with which labels.

An image id is its path relative to the collection root, in POSIX form
(``vault/4370340479_b5a993a891_m.jpg``): two folders may hold the same file
name. A collection has any number of label columns ("tasks"); an image may
lack a label for some of them (``None``).

Sources: a folder with one sub-folder per class (task ``label``), a CSV
manifest with an image column and label columns, and the built-in demo
collection (``featbank.data.demo``).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from featbank.core.errors import BadInput, MissingFile
from featbank.core.fileio import atomic_write_json, atomic_write_text

# Extensions a manifest may leave out (an extension-less reference is looked up
# with these). Folders are read by content: every file there is an image or a
# row of skipped.csv with the reason it is not one.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")
# What operating systems and archivers leave in folders; never images, never listed.
LITTER_FILES = {".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"}
LITTER_DIRS = {"__macosx", "$recycle.bin", "system volume information"}
IMAGE_COLUMN_GUESSES = ("image", "imageid", "image_id", "file", "filename", "path", "id")


@dataclass
class Collection:
    """ids : sorted image ids; labels : task -> list aligned with ids (None = unlabelled)."""

    name: str
    root: Path
    ids: list[str]
    labels: dict[str, list[str | None]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # manifest rows with no file
    source: str = ""
    ignored: int = 0  # hidden files and OS litter left out of a folder scan
    # multi-label tasks -> the separator between the labels of a cell ("wood;paper")
    multi_label: dict[str, str] = field(default_factory=dict)
    # A collection published online (IIIF): its images, fetched while extraction runs
    # (featbank.data.iiif_store.Downloads); None when the images are on disk already.
    downloads: object | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.root = Path(self.root)
        for task, column in self.labels.items():
            if len(column) != len(self.ids):
                raise BadInput(f"task {task!r} has {len(column)} labels for {len(self.ids)} images")

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)

    def label_sets(self, task: str) -> list[tuple[str, ...]]:
        """A multi-label task's labels, as a tuple per image (empty when unlabelled)."""
        sep = self.multi_label[task]
        return [split_labels(v, sep) for v in self.labels[task]]

    def path(self, image_id: str) -> Path:
        return self.root / image_id

    def labels_by_id(self) -> dict[str, dict[str, str | None]]:
        """task -> {image id -> label}: labels of rows in another order than ``ids``."""
        return {task: dict(zip(self.ids, column)) for task, column in self.labels.items()}

    def __len__(self) -> int:
        return len(self.ids)


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise BadInput(f"collection name {name!r} must be letters, digits, '.', '_' or '-'")
    return name


def default_name(path: str | os.PathLike) -> str:
    """A cache-safe collection name from a folder or file name."""
    stem = Path(path).resolve().stem if Path(path).is_file() else Path(path).resolve().name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "collection"


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_litter(path.name)


def is_litter(name: str) -> bool:
    """Hidden files and folders, and what OSes and archivers leave behind."""
    return name.startswith(".") or name.lower() in LITTER_FILES or name.lower() in LITTER_DIRS


def from_folder(root: str | os.PathLike, *, name: str | None = None,
                task: str = "label") -> Collection:
    """One sub-folder per class (nested folders belong to their top-level class).

    Every file is an image id, whatever its extension: extraction decides by
    content (a JPEG named .png, a GIF, a file with no extension) and lists
    what is not an image in skipped.csv. Hidden files and OS litter
    (.DS_Store, Thumbs.db, __MACOSX/) are left out and counted in ``ignored``.
    Symbolic links to folders are not followed, so a loop cannot hang a scan.
    """
    root = Path(root)
    if root.is_file():
        raise BadInput(f"--images {root} is a file, not a folder of class folders (a CSV or "
                       "Dublin Core XML goes with --manifest)")
    if not root.is_dir():
        raise MissingFile(f"image folder {root} does not exist")
    ids, labels, ignored = [], [], 0
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if is_litter(class_dir.name):
            ignored += sum(len(files) for _, _, files in os.walk(class_dir))
            continue
        for dirpath, dirnames, filenames in os.walk(class_dir):
            ignored += sum(len(files) for d in dirnames if is_litter(d)
                           for _, _, files in os.walk(Path(dirpath) / d))
            dirnames[:] = sorted(d for d in dirnames if not is_litter(d))
            for filename in sorted(filenames):
                if is_litter(filename):
                    ignored += 1
                    continue
                ids.append((Path(dirpath) / filename).relative_to(root).as_posix())
                labels.append(class_dir.name)
    if not ids:
        raise BadInput(f"no images found in {root}: expected one sub-folder per class "
                         "holding image files")
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return Collection(name=check_name(name or default_name(root)), root=root,
                      ids=[ids[i] for i in order], labels={task: [labels[i] for i in order]},
                      source=f"folder:{root}", ignored=ignored)


def clean_label(value: str | None) -> str | None:
    """Strip spaces and undo UTF-8 bytes written as escaped text (``Bo\\xc3\\xabtius``)."""
    if value is None:
        return None
    value = re.sub(r"(?:\\x[0-9a-fA-F]{2})+",
                   lambda m: bytes.fromhex(m.group(0).replace("\\x", "")).decode("utf-8", "replace"),
                   value).strip()
    return value or None


def split_labels(value: str | None, separator: str) -> tuple[str, ...]:
    """``"wood; paper;wood"`` -> ``("paper", "wood")``: cleaned, unique, sorted."""
    if value is None:
        return ()
    return tuple(sorted({v for v in (clean_label(p) for p in value.split(separator)) if v}))


def mark_multi_label(labels: dict[str, list], columns: list[str] | None, separator: str,
                     source) -> dict[str, str]:
    """Check the ``--multi-label`` columns and normalise their cells in place
    (``"b; a"`` -> ``"a;b"``); returns task -> separator."""
    if not separator:
        raise BadInput("--label-separator must not be empty")
    for column in columns or []:
        if column not in labels:
            raise BadInput(f"--multi-label column {column!r} is not a task of {source}; "
                             f"its tasks are {', '.join(labels) or 'none'}")
        labels[column] = [separator.join(split_labels(v, separator)) or None
                          for v in labels[column]]
    return {c: separator for c in columns or []}


def chosen_tasks(known: list[str], columns: list[str] | None,
                 unknown: Callable[[str], str]) -> list[str]:
    """The tasks of a collection whose records carry named fields (Dublin Core elements,
    IIIF metadata labels): ``columns`` when given, each one of ``known`` (else BadInput,
    ``unknown(column)`` its message), else every one of ``known``."""
    if columns is None:
        return known
    for column in columns:
        if column not in known:
            raise BadInput(unknown(column))
    return columns


def _index_files(root: Path) -> dict[str, str]:
    """relative path without extension -> relative path, for extension-less manifests."""
    index: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if _is_image(path):
                rel = path.relative_to(root).as_posix()
                index.setdefault(rel.rsplit(".", 1)[0], rel)
    return index


def _resolve(ref: str, root: Path, index: dict[str, str]) -> str | None:
    if ref and (root / ref).is_file():
        return ref
    stem = ref.rsplit(".", 1)[0] if Path(ref).suffix.lower() in IMAGE_EXTENSIONS else ref
    return index.get(stem)


def _pick_image_column(columns: list[str], image_column: str | None, csv_path) -> str:
    if image_column is not None:
        if image_column not in columns:
            raise BadInput(f"{csv_path} has no column {image_column!r}; its columns are "
                             f"{', '.join(c for c in columns if c)}")
        return image_column
    for column in columns:
        if column.lower() in IMAGE_COLUMN_GUESSES:
            return column
    raise BadInput(f"cannot tell which column of {csv_path} names the images "
                     f"({', '.join(c for c in columns if c)}); pass --image-column")


def from_manifest(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  image_column: str | None = None, label_columns: list[str] | None = None,
                  name: str | None = None, multi_label: list[str] | None = None,
                  separator: str = ";") -> Collection:
    """A CSV with an image column (path relative to ``root``, extension optional).

    Unnamed columns (a saved pandas index) are ignored; every other column is a
    task unless ``label_columns`` picks some. Rows whose file is absent are
    listed in ``Collection.missing``. ``multi_label`` columns hold several
    labels per cell, separated by ``separator``.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MissingFile(f"manifest {csv_path} does not exist")
    root = Path(root) if root is not None else csv_path.parent
    if not root.is_dir():
        raise MissingFile(f"image root {root} does not exist")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    image_column = _pick_image_column(columns, image_column, csv_path)
    if label_columns is None:
        label_columns = [c for c in columns if c and c != image_column]
    for column in label_columns:
        if column not in columns:
            raise BadInput(f"{csv_path} has no column {column!r}; its columns are "
                             f"{', '.join(c for c in columns if c)}")
    index = _index_files(root)
    found: dict[str, dict] = {}
    missing = []
    for row in rows:
        ref = (row.get(image_column) or "").strip().replace("\\", "/")
        image_id = _resolve(ref, root, index)
        if image_id is None:
            missing.append(ref)
        else:
            found.setdefault(image_id, row)
    if not found:
        raise BadInput(f"none of the {len(rows)} images named in {csv_path} were found "
                         f"under {root}; check --root")
    ids = sorted(found)
    labels = {c: [clean_label(found[i].get(c)) for i in ids] for c in label_columns}
    marked = mark_multi_label(labels, multi_label, separator, csv_path)
    return Collection(name=check_name(name or default_name(csv_path)), root=root, ids=ids,
                      labels=labels, missing=missing, source=f"manifest:{csv_path}",
                      multi_label=marked)


@contextmanager
def new_collection_folder(folder: Path):
    """A command's collection folder that must not outlive its failure: when the block
    raises and the folder was made by it and holds nothing computed yet (no feature
    file or part, no fine-tuning run, no result), it is removed, so that later commands
    do not list a collection that never was."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException:
        if not existed and folder.is_dir() and not _holds_results(folder):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _holds_results(folder: Path) -> bool:
    features, skipped = folder / "features", folder / "skipped.csv"
    listed = skipped.is_file() and len(skipped.read_text(encoding="utf-8").splitlines()) > 1
    fetched = folder / "iiif" / "images"  # a IIIF collection's downloads are work too
    return (listed or any(features.glob("*.h5")) or any(features.glob("*.parts"))
            or (fetched.is_dir() and any(p.is_file() for p in fetched.rglob("*")))
            or (folder / "results.jsonl").exists()
            or any(p.is_dir() and not p.name.startswith(".")
                   for p in (folder / "finetune").glob("*")))


def save_metadata(collection: Collection, folder: Path) -> None:
    """Write ``collection.json`` and ``labels.csv`` (id + one column per task)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"name": collection.name, "root": str(collection.root.resolve()),
            "source": collection.source, "n_images": len(collection),
            "tasks": collection.tasks, "n_missing": len(collection.missing),
            "n_ignored": collection.ignored, "multi_label": collection.multi_label}
    atomic_write_json(folder / "collection.json", meta)
    rows = [["id", *collection.tasks]]
    rows += [[i, *[(collection.labels[t][k] or "") for t in collection.tasks]]
             for k, i in enumerate(collection.ids)]
    atomic_write_text(folder / "labels.csv", _csv_text(rows))


def load_metadata(folder: Path) -> Collection:
    """The collection as extraction saved it (no image folder needed)."""
    meta_path = folder / "collection.json"
    if not meta_path.is_file():
        raise MissingFile(f"no collection in {folder}; run extract.py first")
    meta = json.loads(meta_path.read_text())
    with open(folder / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    labels = {task: [r[k + 1] or None for r in body] for k, task in enumerate(header[1:])}
    return Collection(name=meta["name"], root=Path(meta["root"]), ids=[r[0] for r in body],
                      labels=labels, source=meta.get("source", ""),
                      multi_label=meta.get("multi_label") or {})


def _csv_text(rows) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()

