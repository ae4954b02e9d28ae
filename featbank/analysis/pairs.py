"""Pairs of images that are one picture twice: found by global features, confirmed locally.

Stage one (recall): every image queries the feature file's similarity index
(:mod:`featbank.store.index`) for its ``k`` nearest neighbours, as it is and,
with ``rotations``, turned by 90, 180 and 270 degrees
(:mod:`featbank.analysis.rotations`); neighbours at cosine ``threshold`` or
more are candidates. Stage two (precision): each candidate is confirmed by
geometric verification of local features (:mod:`featbank.analysis.geometry`),
which tells a copy from a pendant, a second photograph of one facade or two
objects in matching mounts. ``near-duplicates`` groups the confirmed pairs and
``leaks`` lists those whose images fall in different parts of a split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featbank.analysis.geometry import MIN_INLIERS, Verifier, available
from featbank.core.errors import BadInput
from featbank.data.collection import Collection
from featbank.store.features import FeatureFile
from featbank.store.index import CHUNK, search

VERIFY = ("auto", "on", "off")  # auto: when OpenCV is installed


@dataclass(frozen=True)
class PairSettings:
    """How candidate pairs are found and confirmed (``analyze.py duplicates``, ``leaks``)."""

    threshold: float
    k: int = 10
    rotations: bool = True
    verify: str = "auto"
    min_inliers: int = MIN_INLIERS

    def __post_init__(self):
        if self.verify not in VERIFY:
            raise BadInput(f"--verify {self.verify!r}: use {', '.join(VERIFY)}")
        if self.min_inliers < 3:
            raise BadInput(f"--min-inliers {self.min_inliers}: at least 3")

    def checks(self) -> bool:
        """Whether candidates are verified (``auto``: when OpenCV imports)."""
        return self.verify == "on" or (self.verify == "auto" and available())


@dataclass
class Pairs:
    """Candidate pairs, rows ``a < b`` of the feature file, best cosine first.

    ``rotation``: degrees counter-clockwise that turn image ``a`` into ``b`` (0 for an
    upright copy); ``inliers``: RANSAC inliers of the local match, -1 when not
    verified; ``confirmed``: those with ``min_inliers`` or more (every candidate when
    ``verified`` is False).
    """

    a: np.ndarray
    b: np.ndarray
    cosine: np.ndarray
    rotation: np.ndarray
    inliers: np.ndarray = field(default=None)
    mirrored: np.ndarray = field(default=None)
    verified: bool = False
    min_inliers: int = MIN_INLIERS

    def __post_init__(self):
        n = len(self.a)
        self.inliers = np.full(n, -1) if self.inliers is None else self.inliers
        self.mirrored = np.zeros(n, bool) if self.mirrored is None else self.mirrored

    @property
    def confirmed(self) -> np.ndarray:
        return self.inliers >= self.min_inliers if self.verified else np.ones(len(self.a), bool)

    def __len__(self) -> int:
        return len(self.a)


def near_pairs(index, features, threshold: float, k: int, *, skip_self: bool) -> np.ndarray:
    """(i, j, cosine) of every row i of ``features`` (an array or an HDF5 dataset) and
    indexed neighbour j at ``threshold`` or more (``skip_self``: j != i)."""
    found_pairs = [np.zeros((0, 3))]
    total = features.shape[0]
    for start in range(0, total, CHUNK):
        block = features[start:min(total, start + CHUNK)]
        found, similarity = search(index, block, min(k + skip_self, index.ntotal))
        rows = np.repeat(np.arange(start, start + len(block)), found.shape[1])
        keep = (similarity.ravel() >= threshold) & (found.ravel() >= 0)
        if skip_self:
            keep &= found.ravel() != rows
        found_pairs.append(np.column_stack([rows[keep], found.ravel()[keep],
                                            similarity.ravel()[keep]]))
    return np.concatenate(found_pairs)


def candidate_pairs(index, entry: FeatureFile, settings: PairSettings, *,
                    turned: np.ndarray | None = None) -> Pairs:
    """Stage one: each unordered pair once, at its best cosine over the upright query and
    the ``turned`` ones (planes of :func:`featbank.analysis.rotations.rotated_features`)."""
    from featbank.analysis.rotations import ANGLES

    best: dict[tuple[int, int], tuple[float, int]] = {}
    with h5py.File(entry.path, "r") as f:
        found = [(0, near_pairs(index, f["features"], settings.threshold, settings.k,
                                skip_self=True))]
    for angle, plane in zip(ANGLES, turned if turned is not None else []):
        found.append((angle, near_pairs(index, plane, settings.threshold, settings.k,
                                        skip_self=True)))
    for angle, rows in found:
        for i, j, s in rows.tolist():
            i, j = int(i), int(j)
            # i turned by angle looks like j: from the smaller row's side, the turn is
            # angle when it is i, and the turn back when it is j
            key, turn = ((i, j), angle) if i < j else ((j, i), (360 - angle) % 360)
            if s > best.get(key, (-2.0, 0))[0]:
                best[key] = (s, turn)
    order = sorted(best, key=lambda key: (-best[key][0], key))
    return Pairs(a=np.array([a for a, _ in order], dtype=np.int64),
                 b=np.array([b for _, b in order], dtype=np.int64),
                 cosine=np.array([best[key][0] for key in order], dtype=np.float64),
                 rotation=np.array([best[key][1] for key in order], dtype=np.int64))


def verify(pairs: Pairs, collection: Collection, ids: list[str], settings: PairSettings, *,
           progress=lambda it, **_: it) -> Pairs:
    """Stage two: the RANSAC inliers of each pair's local match (ORB, OpenCV)."""
    verifier = Verifier()
    inliers, mirrored = np.zeros(len(pairs), np.int64), np.zeros(len(pairs), bool)
    for n in progress(range(len(pairs)), desc="verifying pairs", unit="pair"):
        match = verifier.match(collection.path(ids[pairs.a[n]]), collection.path(ids[pairs.b[n]]))
        inliers[n], mirrored[n] = match.inliers, match.mirrored
    pairs.inliers, pairs.mirrored, pairs.verified = inliers, mirrored, True
    pairs.min_inliers = settings.min_inliers
    return pairs


def find_pairs(collection: Collection, entry: FeatureFile, ids: list[str], provenance: dict,
               index, settings: PairSettings, *, cache_root: str | Path,
               weights_file: str | None = None, device: str = "cpu",
               progress=lambda it, **_: it) -> Pairs:
    """Both stages, as ``settings`` asks, over the file's rows (``ids``, its attributes
    ``provenance``)."""
    turned = None
    if settings.rotations:
        from featbank.analysis.rotations import rotated_features

        turned = rotated_features(collection, entry, ids, provenance, cache_root=cache_root,
                                  weights_file=weights_file, device=device, progress=progress)
    pairs = candidate_pairs(index, entry, settings, turned=turned)
    if settings.checks():
        pairs = verify(pairs, collection, ids, settings, progress=progress)
    return pairs
