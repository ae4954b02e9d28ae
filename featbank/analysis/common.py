"""What every analysis shares: its output folder, the one feature file it reads,
labels aligned with feature rows, thumbnails and small HTML pages.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from featbank.core.errors import BadInput, MissingFile
from featbank.core.fileio import atomic_path, atomic_write_text, safe_name
from featbank.data.collection import Collection
from featbank.models.registry import check_names
from featbank.store.features import FeatureFile, Features, one_feature_file, read_features
from featbank.store.provenance import same_attr

THUMB_SIZE = 112


def output_folder(cache_root: str | Path, collection: str, command: str) -> Path:
    """``<cache>/<collection>/analysis/<command>/``, made if needed."""
    folder = Path(cache_root) / collection / "analysis" / command
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def file_label(label: str) -> str:
    """A network's label (``sha256:…``, a run folder's name) as part of a file name."""
    return safe_name(label.replace(":", "-"))[:40]


def progress_bar(enabled: bool):
    """``bar(iterable, desc=...)``: tqdm on stderr when enabled, the iterable itself otherwise."""
    if not enabled:
        return lambda iterable, **_: iterable
    from tqdm.auto import tqdm

    return lambda iterable, **kw: tqdm(iterable, leave=False, **kw)


def single_feature_file(cache_root: str | Path, collection: str, backbone: str, weights: str,
                        *, warn=print) -> FeatureFile:
    """The one feature file of ``backbone`` with ``weights`` (``all``: the only one there is)."""
    check_names([backbone])  # an unknown name is a registry error, not a missing file
    return one_feature_file(Path(cache_root) / collection, backbone, weights, warn=warn)


def task_labels(collection: Collection, task: str, ids: list[str]) -> np.ndarray:
    """Labels of ``task`` for ``ids`` (object array; None where unlabelled)."""
    if task not in collection.labels:
        raise BadInput(f"unknown task {task!r}; collection {collection.name!r} has "
                         f"{', '.join(collection.tasks) or 'no tasks'}")
    by_id = collection.labels_by_id()[task]
    return np.array([by_id.get(i) for i in ids], dtype=object)


def preprocess_change(stored: dict, now: dict) -> tuple[str, object, object] | None:
    """The first preprocessing attribute (key, stored, now) a feature file recorded
    otherwise than ``now`` (``Preprocess.attrs()``); None when the images were made alike."""
    for key, value in now.items():
        was = stored.get(key, value)
        if not same_attr(was, value):
            return key, was, value
    return None


def read_entry(entry: FeatureFile) -> Features:
    data = read_features(entry.path)
    data.X = data.X.astype(np.float32, copy=False)
    return data


def describe(entry: FeatureFile) -> dict:
    """The settings of a feature file that a result depends on (for the JSON outputs)."""
    return {"backbone": entry.backbone, "weights": entry.weights,
            "weights_exact": entry.weights_exact, "features": str(entry.path),
            "features_sha256": entry.content_sha256,  # what its rows held when this ran
            "feature_dim": entry.feature_dim, "n_rows": entry.n_rows}


def trunk_weights(entry: FeatureFile, attrs: dict, weights_file: str | None) -> str:
    """What to pass to ``load_trunk`` to rebuild the trunk that made ``entry``: the
    weights file given, else the one the file recorded, else the last extraction's."""
    if entry.weights in ("imagenet", "random"):
        return entry.weights
    from featbank.models.registry import weights_id

    if weights_file:
        if weights_id(weights_file, option="--weights-file") != entry.weights:
            raise BadInput(f"--weights-file {weights_file} is not the file {entry.path.name} "
                             f"was extracted with ({entry.weights[:19]})")
        return weights_file
    last_run = entry.path.parent.parent / "extract_config.json"
    candidates = [attrs.get("weights_source"),
                  json.loads(last_run.read_text()).get("weights") if last_run.is_file() else None]
    for path in filter(None, candidates):
        if Path(path).is_file() and weights_id(path) == entry.weights:
            return path
    raise MissingFile(f"{entry.path.name} was extracted with a weights file "
                            f"({entry.weights[:19]}) that is no longer at its recorded path; "
                            "pass --weights-file PATH")


def settings_of(config) -> dict:
    """A config's settings for a JSON report, its split (if any) as the split's tag."""
    from dataclasses import asdict

    settings = asdict(config)
    if "split" in settings:
        settings["split"] = config.split.tag
    return settings


# -- pictures ---------------------------------------------------------------------------

def thumbnail(path: Path, size: int = THUMB_SIZE) -> Image.Image:
    """An RGB thumbnail filling ``size`` x ``size`` at its aspect ratio; a grey square when it cannot be read."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            im = ImageOps.exif_transpose(im).convert("RGB")
            return ImageOps.contain(im, (size, size))  # small images are scaled up
    except (OSError, ValueError, Image.DecompressionBombError):
        return Image.new("RGB", (size, size), (128, 128, 128))


def thumbnail_files(images: dict[str, Path], folder: Path, *, size: int = THUMB_SIZE,
                    progress=lambda it, **_: it) -> dict[str, str]:
    """Write a JPEG thumbnail of each image (key -> file) under ``folder/thumbs``, kept
    between runs; returns key -> its path relative to ``folder``, for HTML pages there."""
    thumbs = folder / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, path in progress(list(images.items()), desc="thumbnails", unit="img"):
        name = hashlib.sha1(f"{Path(path).resolve()}\0{size}".encode()).hexdigest()[:16] + ".jpg"
        target = thumbs / name
        if not target.is_file():
            with atomic_path(target) as tmp:
                thumbnail(Path(path), size).save(tmp, format="JPEG", quality=85)
        out[key] = f"thumbs/{name}"
    return out


def sheet_rows(cells: list, per_row: int = 8) -> list:
    """Contact-sheet rows of ``per_row`` cells, each titled with its ranks (``1-8``, ...)."""
    return [(f"{k + 1}-{k + len(cells[k:k + per_row])}", cells[k:k + per_row])
            for k in range(0, len(cells), per_row)]


@functools.lru_cache(maxsize=1)
def _templates():
    """The pages' templates (``featbank/analysis/templates``), autoescaped: every id,
    label and name from a collection reaches a page as text, and data for scripts as
    JSON read with ``JSON.parse`` and inserted with ``textContent``, never as markup."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("featbank.analysis", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined)


def write_page(path: Path, template: str, **context) -> Path:
    """Render ``template`` with ``context`` to the HTML page ``path`` (whole or absent)."""
    atomic_write_text(path, _templates().get_template(template).render(**context))
    return path
