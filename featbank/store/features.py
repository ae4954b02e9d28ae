"""Feature files on disk and the features read from them.

One HDF5 file per collection x backbone x weights (x layer, with
``extract.py --layers``), readable with plain h5py
(the contract in docs/design.md):

- ``features``: (N, D) float32 (or float16 by option); row i belongs to ``ids[i]``;
- ``ids``: (N,) UTF-8 strings (fixed length), the image path relative to the collection root;
- ``skipped_ids`` / ``skipped_reasons``: images that could not be decoded;
- attributes: what made the rows (:mod:`featbank.store.provenance`).

This module reads files (:func:`read_features`), lists a collection's files
(:func:`feature_files`), reads several as one (``A+B``, concatenated on the
ids they share) and writes the collection's ``skipped.csv``. Writing rows is
:mod:`featbank.store.writer`; extraction only computes vectors.
"""
from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featbank.core.errors import BadInput, DamagedFile, MissingFile
from featbank.core.fileio import atomic_path, first_line
from featbank.store.health import raise_if_damaged
from featbank.store.layout import content_identity
from featbank.store.provenance import FINAL, plain_attrs, provenance_value, weights_label


@dataclass
class Features:
    """Features in memory: what a feature file (or several, concatenated) holds.

    Attributes
    ----------
    ids : list of str, length n
        Image ids (paths relative to the collection root); row i of ``X`` is ``ids[i]``.
    X : ndarray of shape (n, d)
        The vectors (float32, or float16 when the file stores them so).
    provenance : dict
        The file's attributes: backbone, exact weights, preprocessing, versions
        (:mod:`featbank.store.provenance`).
    skipped : dict
        Image id -> why it has no row (could not be decoded).
    labels : dict
        Task -> label of each row (None where unlabelled); empty unless the reader
        joined the collection's labels (``featbank.load_features`` does).
    """

    ids: list[str]
    X: np.ndarray
    provenance: dict
    skipped: dict[str, str]
    labels: dict[str, list] = field(default_factory=dict)


def read_features(path: str | os.PathLike) -> Features:
    """The ids, vectors, attributes and skipped images of a feature file, in memory.

    A damaged file (:mod:`featbank.store.health`) is refused, naming it and the damage.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"feature file {path} does not exist; run extract.py first")
    raise_if_damaged(path)
    with h5py.File(path, "r") as f:
        return Features(ids=list(f["ids"].asstr()[:]), X=f["features"][:],
                          provenance=plain_attrs(dict(f.attrs)),
                          skipped=dict(zip(f["skipped_ids"].asstr()[:],
                                           f["skipped_reasons"].asstr()[:])))


def read_skipped(path: str | os.PathLike) -> dict[str, str]:
    """Undecodable image id -> reason, without reading the features."""
    with h5py.File(path, "r") as f:
        return dict(zip(f["skipped_ids"].asstr()[:], f["skipped_reasons"].asstr()[:]))


def iter_rows(path: str | os.PathLike, chunk: int = 65_536):
    """(ids, float32 vectors) of a feature file, ``chunk`` rows at a time, in file order:
    a file of any size read without holding its matrix. Damage is refused first."""
    raise_if_damaged(Path(path))
    with h5py.File(path, "r") as f:
        ids, features = f["ids"].asstr(), f["features"]
        for start in range(0, features.shape[0], chunk):
            stop = min(features.shape[0], start + chunk)
            yield list(ids[start:stop]), features[start:stop].astype(np.float32, copy=False)


def count_rows(path: str | os.PathLike) -> int:
    with h5py.File(path, "r") as f:
        return int(f["ids"].shape[0])


# -- a collection's feature files ------------------------------------------------------

@dataclass(frozen=True)
class FeatureFile:
    """One feature file as listed by :func:`feature_files` (attributes only, no vectors)."""

    path: Path
    backbone: str
    weights: str
    weights_exact: str
    feature_dim: int
    n_rows: int
    weights_label: str = ""  # readable, for tables (provenance.weights_label)
    layer: str = FINAL  # the trunk's layer (models.layers); files before layers: final
    layer_index: int | None = None  # its place from the input (1 first)
    pool: str = "model"  # how its output became a vector

    @property
    def layer_tag(self) -> str:
        """Empty for the trunk's own output, else ``<layer>/<pool>``: what tells this
        file's cells from those of the backbone's final file."""
        return "" if self.layer == FINAL and self.pool == "model" else f"{self.layer}/{self.pool}"

    @functools.cached_property
    def content_sha256(self) -> str:
        """What the file's rows hold (:func:`featbank.store.layout.content_identity`): what
        a result computed from it records, and is reused only while it holds."""
        return content_identity(self.path)

    @functools.cached_property
    def fit_ids(self) -> frozenset[str]:
        """The images a fine-tuned trunk behind these features was trained or validated on
        (``trunk_fit_ids``; empty for other weights): never tested on."""
        with h5py.File(self.path, "r") as f:
            if "trunk_fit_ids" not in f:
                if f.attrs.get("trunk_fit"):
                    raise DamagedFile(
                        f"{self.path} was extracted with a fine-tuned trunk but has lost the "
                        "list of the images it trained on (a repair rebuilt it); run "
                        "extract.py again with the same --weights to record it")
                return frozenset()
            return frozenset(f["trunk_fit_ids"].asstr()[:])

    def read(self) -> Features:
        """The file's ids, vectors, attributes and skipped images, in memory."""
        return read_features(self.path)


def feature_files(folder: Path, backbones: str = "all", weights: str = "all", *,
                  layers: str = FINAL, warn=print) -> list[FeatureFile]:
    """The collection's feature files matching the backbone, weights and layers filters
    (:func:`pick_layers`; by default the trunks' outputs, ``final``).

    A damaged file is refused, named (:func:`~featbank.store.health.raise_if_damaged`);
    one that holds no rows is reported through ``warn`` and left out; a named backbone
    with no usable file is an error.
    """
    entries = []
    for path in sorted((Path(folder) / "features").glob("*.h5")):
        raise_if_damaged(path)
        try:
            with h5py.File(path, "r") as f:
                a = plain_attrs(dict(f.attrs))
                exact = str(provenance_value(a, "weights_exact") or a["weights"])
                entry = FeatureFile(path, str(a["backbone"]), str(a["weights"]), exact,
                                    int(a["feature_dim"]), int(f["ids"].shape[0]),
                                    str(a.get("weights_label") or weights_label(a["weights"], exact)),
                                    str(a.get("layer", FINAL)), a.get("layer_index"),
                                    str(a.get("pool", "model")))
        except KeyError as err:  # an HDF5 file of something else
            raise DamagedFile(f"{path} is not a feature file (no {first_line(err)} attribute); "
                              "move it out of the features folder") from None
        if entry.n_rows == 0:
            warn(f"skipping {path}: it holds no rows; delete it and run extract.py again")
            continue
        entries.append(entry)
    if not entries:
        raise MissingFile(f"no usable feature files in {Path(folder) / 'features'}; "
                                "run extract.py first")
    wanted = {b.strip() for b in backbones.split(",")} - {"all"}
    known = sorted({e.backbone for e in entries})
    if wanted - set(known):
        raise BadInput(f"no features of {', '.join(sorted(wanted - set(known)))} for "
                         f"collection {Path(folder).name!r}; it has {', '.join(known)} "
                         "(run extract.py --backbone ... first)")
    chosen = [e for e in entries if not wanted or e.backbone in wanted]
    return pick_layers(_admitted(chosen, weights, "all"), layers)


def pick_layers(entries: list[FeatureFile], layers: str) -> list[FeatureFile]:
    """The files of the layers ``layers`` names: ``all``, or layer names and numbers
    (``final`` the trunks' outputs), comma-separated; a name no file has is refused,
    naming those there are."""
    wanted = [w.strip() for w in layers.split(",") if w.strip()]
    if "all" in wanted:
        return entries
    chosen = [e for e in entries if e.layer in wanted or str(e.layer_index) in wanted]
    found = {w for w in wanted for e in chosen if w in (e.layer, str(e.layer_index))}
    if set(wanted) - found:
        known = sorted({e.layer for e in entries}, key=lambda n: (n == FINAL, n))
        raise BadInput(f"--layers {','.join(sorted(set(wanted) - found))}: no such layer among "
                       f"the feature files ({', '.join(known)}); extract it with extract.py "
                       "--layers")
    return chosen


def one_feature_file(folder: Path, backbone: str, weights: str = "all", *,
                     warn=print) -> FeatureFile:
    """The one feature file of ``backbone`` with ``weights`` in a collection's cache folder
    (``all``: the only one there is; several is an error naming their weights)."""
    entries = feature_files(folder, backbone, weights, warn=warn)
    if len(entries) > 1:
        raise BadInput(f"{backbone} has features with weights "
                         f"{', '.join(e.weights[:19] for e in entries)}; pick one with --weights")
    return entries[0]


@dataclass(frozen=True)
class Concatenation:
    """What a head trains on: one feature file, or several read as one (``A+B``), their
    vectors concatenated on the ids they all hold, in the first file's order."""

    parts: tuple[FeatureFile, ...]

    @property
    def backbone(self) -> str:
        return "+".join(p.backbone for p in self.parts)

    @property
    def weights(self) -> str:
        return "+".join(p.weights for p in self.parts)

    @property
    def weights_exact(self) -> str:
        return "+".join(p.weights_exact for p in self.parts)

    @property
    def weights_label(self) -> str:
        return " + ".join(p.weights_label for p in self.parts)

    @property
    def feature_dim(self) -> int:
        return sum(p.feature_dim for p in self.parts)

    @property
    def layer(self) -> str:
        """``final`` when every part is a trunk's output, else the parts' layers joined."""
        return "+".join(p.layer for p in self.parts) if self.layer_tag else FINAL

    @property
    def layer_index(self) -> int | None:
        return self.parts[0].layer_index if len(self.parts) == 1 else None

    @property
    def layer_tag(self) -> str:
        """Empty when every part is a trunk's output (see :attr:`FeatureFile.layer_tag`)."""
        tags = [p.layer_tag for p in self.parts]
        return "+".join(tags) if any(tags) else ""

    @property
    def n_rows(self) -> int | tuple[int, ...]:
        """Rows of the file (of each file, for a combination): part of a result's identity."""
        return self.parts[0].n_rows if len(self.parts) == 1 else tuple(p.n_rows for p in self.parts)

    @property
    def stem(self) -> str:
        return "+".join(p.path.stem for p in self.parts)

    @property
    def paths(self) -> str:
        return " + ".join(str(p.path) for p in self.parts)

    @property
    def fit_ids(self) -> frozenset[str]:
        """Images any part's fine-tuned trunk trained or validated on (never tested on)."""
        return frozenset().union(*(p.fit_ids for p in self.parts))

    @property
    def content(self) -> dict[str, str]:
        """Each part's file (``features/<name>``) -> what its rows hold: a result's inputs."""
        return {f"features/{p.path.name}": p.content_sha256 for p in self.parts}

    def read(self) -> Features:
        sets = [read_features(p.path) for p in self.parts]
        if len(sets) == 1:
            return sets[0]
        ids, blocks = align_on_ids(sets, [p.path.name for p in self.parts])
        blocks = [b.astype(np.float32, copy=False) for b in blocks]
        skipped = {k: v for data in sets for k, v in data.skipped.items()}
        attrs = {"backbone": self.backbone, "weights": self.weights,
                 "weights_exact": self.weights_exact, "feature_dim": self.feature_dim}
        return Features(ids=ids, X=np.concatenate(blocks, axis=1), provenance=attrs,
                          skipped=skipped)


def align_on_ids(sets: list[Features], names: list[str]) -> tuple[list[str], list[np.ndarray]]:
    """The ids every set holds (in the first set's order) and each set's rows for them.

    names : the sets' file names, for the error when two share no id.
    """
    shared = set(sets[0].ids)
    for name, data in zip(names[1:], sets[1:]):
        if not shared & set(data.ids):
            raise BadInput(f"{names[0]} and {name} have no image ids in common; use feature "
                             "files of one collection")
        shared &= set(data.ids)
    if not shared:
        raise BadInput(f"{', '.join(names)} have no image id in all of them; use feature files "
                         "of one collection")
    ids = [i for i in sets[0].ids if i in shared]
    blocks = []
    for data in sets:
        row = {image_id: k for k, image_id in enumerate(data.ids)}
        blocks.append(data.X[[row[i] for i in ids]])
    return ids, blocks


def select_features(folder: Path, parsed: list[tuple[tuple[str, str | None], ...]],
                    weights: str = "all", *, layers: str = FINAL,
                    warn=print) -> list[Concatenation]:
    """The feature sources ``--backbone`` names, parsed by
    :func:`featbank.models.registry.parse_selection` (``[]``: every file).

    A single backbone stands for each of its files that ``weights`` admits; each
    part of a combination ``A+B`` must name exactly one file (``A@imagenet``).
    """
    names = sorted({name for item in parsed for name, _ in item}) or ["all"]
    entries = feature_files(folder, ",".join(names), "all", layers=layers, warn=warn)
    if not parsed:
        return [Concatenation((e,)) for e in _admitted(entries, weights, "all")]
    sources = []
    for item in parsed:
        matches = [_admitted([e for e in entries if e.backbone == name], w or weights, name)
                   for name, w in item]
        if len(item) == 1:
            sources += [Concatenation((e,)) for e in matches[0]]
            continue
        for (name, _), found in zip(item, matches):
            if len(found) > 1:
                raise BadInput(f"{name} has feature files with weights "
                                 f"{', '.join(e.weights[:19] for e in found)}; name one in the "
                                 f"combination, e.g. {name}@{found[0].weights[:19]}")
        sources.append(Concatenation(tuple(found[0] for found in matches)))
    return list(dict.fromkeys(sources))


def _admitted(entries: list[FeatureFile], weights: str, name: str) -> list[FeatureFile]:
    if weights == "all":
        return entries
    chosen = [e for e in entries if e.weights == weights or e.weights.startswith(weights)]
    if not chosen:
        raise BadInput(f"no {'' if name == 'all' else name + ' '}features with weights "
                         f"{weights!r}; found "
                         f"{', '.join(sorted({e.weights[:19] for e in entries}))}")
    return chosen


def write_skipped_list(folder: Path, missing: list[str], paths: list[Path]) -> Path:
    """``skipped.csv``: every image of the collection that has no feature row, and why.

    missing : manifest rows with no file; paths : the feature files whose
    skipped lists to gather. Written even when empty (header only), so a user
    can always look there.
    """
    rows = {ref: "listed in the manifest but no such file under the root" for ref in missing}
    for path in paths:
        rows.update(read_skipped(path))
    target = Path(folder) / "skipped.csv"
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "reason"])
        writer.writerows(sorted(rows.items()))
    return target
