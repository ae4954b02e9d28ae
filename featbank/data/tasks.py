"""Tasks and their splits.

A task is one label column of a collection. Its split is made once, saved in
the cache (``<cache>/<collection>/splits/``, :mod:`featbank.data.saved_splits`,
which also makes it follow the collection), and read by every head, every
backbone and the fine-tune stage, so all numbers of a table share one split.
Only classes with enough images to appear in every split are kept (Sabatelli
et al.); what was dropped is recorded beside the split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from featbank.core.errors import BadInput
from featbank.data.collection import Collection

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """Fractions of each class going to train / val / test, and the seed."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    min_per_class: int | None = None  # default: enough for one image in every split
    group_by: str | None = None  # a column whose values never straddle two parts

    def __post_init__(self):
        fractions = (self.train, self.val, self.test)
        if min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise BadInput(f"split fractions must be positive and sum to 1, not {fractions}")
        if self.min_per_class is not None and self.min_per_class < 3:
            raise BadInput(f"--min-per-class {self.min_per_class}: a class needs at least 3 "
                             "images, one for each of train, val and test")

    @classmethod
    def of(cls, split: "str | Sequence[float] | SplitSpec", **kwargs) -> "SplitSpec":
        """A split given as ``"80/10/10"``, as fractions ``(0.8, 0.1, 0.1)`` (any three
        positive numbers, normalised) or as a SplitSpec (``kwargs`` replace its fields)."""
        if isinstance(split, SplitSpec):
            return dataclasses.replace(split, **kwargs)
        if isinstance(split, str):
            return cls.parse(split, **kwargs)
        parts = [float(p) for p in split]
        if len(parts) != 3 or min(parts) <= 0:
            raise BadInput(f"split {tuple(split)!r}: give three positive train/val/test "
                           "fractions, e.g. (0.8, 0.1, 0.1)")
        return cls(*(p / sum(parts) for p in parts), **kwargs)

    @classmethod
    def parse(cls, text: str, **kwargs) -> "SplitSpec":
        """``"80/10/10"`` or ``"0.7/0.1/0.2"``."""
        try:
            parts = [float(p) for p in text.split("/")]
        except ValueError:
            parts = []
        if len(parts) != 3:
            raise BadInput(f"--split {text!r}: give train/val/test, e.g. 80/10/10 or 70/10/20")
        total = sum(parts)
        return cls(*(p / total for p in parts), **kwargs)

    @property
    def minimum(self) -> int:
        return self.min_per_class or math.ceil(1 / min(self.train, self.val, self.test) - 1e-9)

    def identity(self) -> str:
        """What a result's identity records of its split (see ``core.settings.identity``)."""
        return self.tag

    @property
    def tag(self) -> str:
        pct = "-".join(f"{round(100 * f)}" for f in (self.train, self.val, self.test))
        grouped = f"_by-{re.sub(r'[^A-Za-z0-9._-]+', '_', self.group_by)}" if self.group_by else ""
        return f"{pct}_min{self.minimum}_seed{self.seed}{grouped}"


@dataclass
class Split:
    """ids, their labels and their part ('train' | 'val' | 'test'), plus what was dropped."""

    task: str
    ids: list[str]
    labels: list[str]
    parts: list[str]
    dropped: dict[str, int]  # class -> images, classes under the minimum
    spec: SplitSpec
    separator: str | None = None  # a multi-label task: labels are "a;b" strings
    groups: dict[str, str] | None = None  # a grouped split: id -> its group

    @property
    def digest(self) -> str:
        """``sha256:`` of the (id, label, part) rows: the split's identity, which every
        result computed on it records."""
        rows = sorted(zip(self.ids, self.labels, self.parts))
        text = "\n".join("\t".join(row) for row in rows)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def select(self, part: str) -> tuple[list[str], list[str]]:
        rows = [k for k, p in enumerate(self.parts) if p == part]
        return [self.ids[k] for k in rows], [self.labels[k] for k in rows]

    @property
    def multi_label(self) -> bool:
        return self.separator is not None

    @property
    def classes(self) -> list[str]:
        if self.multi_label:
            return sorted({c for v in self.labels for c in v.split(self.separator)})
        return sorted(set(self.labels))

    def indicator(self, labels: list[str]) -> np.ndarray:
        """0/1 matrix (n, classes) of multi-label ``labels`` (``"a;b"`` strings)."""
        return indicator([v.split(self.separator) for v in labels], self.classes)


def indicator(label_sets, classes: list[str]) -> np.ndarray:
    """0/1 matrix (n, len(classes)): row k marks the classes of ``label_sets[k]``."""
    column = {c: k for k, c in enumerate(classes)}
    Y = np.zeros((len(label_sets), len(column)), dtype=np.int8)
    for row, labels in enumerate(label_sets):
        Y[row, [column[c] for c in labels]] = 1
    return Y


def stratified_parts(labels: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """Assign each row to train / val / test, class by class (pure, seeded).

    labels : array of shape (n,). Every class must have at least ``spec.minimum``
    rows; each then gets at least one row in every part.
    """
    rng = np.random.default_rng(spec.seed)
    parts = np.empty(len(labels), dtype=object)
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        n = len(rows)
        n_test = max(1, round(n * spec.test))
        n_val = max(1, round(n * spec.val))
        n_val = min(n_val, n - n_test - 1)
        parts[rows[:n_test]] = "test"
        parts[rows[n_test:n_test + n_val]] = "val"
        parts[rows[n_test + n_val:]] = "train"
    return parts


def _held_out(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Rows of one fold of ``StratifiedGroupKFold`` with about ``fraction`` of the rows."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise BadInput(f"{n_groups} groups cannot be split {n_splits} ways; --group-by needs "
                         "a column with more distinct values, or use another --split")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # classes rarer than n_splits: stratified as far as possible
        warnings.simplefilter("ignore", UserWarning)
        return next(folds.split(np.zeros(len(labels)), labels, groups))[1]


def grouped_parts(labels: np.ndarray, groups: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """Assign each row to train / val / test with every group inside one part (pure, seeded).

    scikit-learn's ``StratifiedGroupKFold`` takes one fold as the test part, then
    one fold of the rest as the validation part, keeping class proportions as
    far as whole groups allow. Part sizes follow the fractions only roughly
    when groups are large. A class may miss a part: see :func:`make_split`.
    """
    parts = np.full(len(labels), "train", dtype=object)
    test = _held_out(labels, groups, spec.test, spec.seed)
    parts[test] = "test"
    rest = np.flatnonzero(parts == "train")
    val = _held_out(labels[rest], groups[rest], spec.val / (spec.train + spec.val), spec.seed)
    parts[rest[val]] = "val"
    return parts


def make_split(collection: Collection, task: str, spec: SplitSpec) -> Split:
    """The split of one task: unlabelled images and too-small classes are left out.

    With ``spec.group_by``, images sharing a value of that column (an artist, an
    object) stay in one part; an image without a value is a group of its own.
    A class that whole groups leave out of some part is dropped, like a class
    under the minimum.
    """
    if task not in collection.labels:
        raise BadInput(f"unknown task {task!r}; collection {collection.name!r} has "
                         f"{', '.join(collection.tasks) or 'no tasks'}")
    if spec.group_by is not None and spec.group_by not in collection.labels:
        raise BadInput(f"unknown --group-by column {spec.group_by!r}; collection "
                         f"{collection.name!r} has {', '.join(collection.tasks) or 'no columns'}")
    if task in collection.multi_label:
        return make_multi_label_split(collection, task, spec)
    pairs = [(i, y) for i, y in zip(collection.ids, collection.labels[task]) if y is not None]
    counts: dict[str, int] = {}
    for _, y in pairs:
        counts[y] = counts.get(y, 0) + 1
    if len(counts) < 2:
        raise BadInput(f"task {task!r} has {len(counts)} class(es) "
                         f"({', '.join(counts) or 'no labels'}); a classifier needs at least two")
    kept = {c for c, n in counts.items() if n >= spec.minimum}
    if len(kept) < 2:
        raise BadInput(f"task {task!r}: {len(kept)} of its {len(counts)} classes have at least "
                         f"{spec.minimum} images (the minimum for one image in every split); "
                         "lower --min-per-class or use another --split")
    pairs = [(i, y) for i, y in pairs if y in kept]
    ids = [i for i, _ in pairs]
    labels = np.array([y for _, y in pairs], dtype=object)
    if spec.group_by is None:
        parts = stratified_parts(labels, spec)
    else:
        parts = grouped_parts(labels, group_values(collection, ids, spec.group_by), spec)
        everywhere = set.intersection(*(set(labels[parts == p]) for p in SPLITS))
        if len(everywhere) < 2:
            raise BadInput(f"task {task!r} grouped by {spec.group_by!r}: {len(everywhere)} "
                             "classes reach train, val and test; the groups are too few or "
                             "too large for this split")
        kept = everywhere
        keep = np.isin(labels, list(kept))
        ids, labels, parts = [i for i, k in zip(ids, keep) if k], labels[keep], parts[keep]
    dropped = {c: n for c, n in sorted(counts.items()) if c not in kept}
    groups = None if spec.group_by is None else \
        dict(zip(ids, group_values(collection, ids, spec.group_by)))
    return Split(task, ids, labels.tolist(), parts.tolist(), dropped, spec, groups=groups)


def group_values(collection: Collection, ids: list[str], column: str) -> np.ndarray:
    """Each id's value of ``column``; an image without one is a group of its own."""
    group_of = dict(zip(collection.ids, collection.labels[column]))
    return np.array([group_of[i] if group_of[i] is not None else f"image:{i}" for i in ids],
                    dtype=object)


def multi_label_parts(Y: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """Train / val / test of a 0/1 label matrix (n, k) by iterative stratification
    (Sechidis et al.; the ``iterative-stratification`` package), so that rare labels
    reach every part: the test part first, then the validation part of the rest."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    parts = np.full(len(Y), "train", dtype=object)
    first = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=spec.test,
                                             random_state=spec.seed)
    rest, test = next(first.split(np.zeros(len(Y)), Y))
    parts[test] = "test"
    second = MultilabelStratifiedShuffleSplit(n_splits=1,
                                              test_size=spec.val / (spec.train + spec.val),
                                              random_state=spec.seed)
    _, val = next(second.split(np.zeros(len(rest)), Y[rest]))
    parts[rest[val]] = "val"
    return parts


def make_multi_label_split(collection: Collection, task: str, spec: SplitSpec) -> Split:
    """The split of a multi-label task (several labels per image, see ``--multi-label``).

    Labels on fewer than ``spec.minimum`` images, or that the split leaves out of
    a part, are dropped from every image (and reported); an image left with no
    label is left out. With ``spec.group_by``, whole groups go to one part,
    stratified on each image's rarest label (no group-aware iterative
    stratification exists in scikit-learn or iterstrat; the rarest label is
    the one a careless split loses first).
    """
    sep = collection.multi_label[task]
    pairs = [(i, s) for i, s in zip(collection.ids, collection.label_sets(task)) if s]
    counts: dict[str, int] = {}
    for _, labels in pairs:
        for c in labels:
            counts[c] = counts.get(c, 0) + 1
    kept = {c for c, n in counts.items() if n >= spec.minimum}
    if len(kept) < 2:
        raise BadInput(f"task {task!r}: {len(kept)} of its {len(counts)} labels are on at "
                         f"least {spec.minimum} images (the minimum for one image in every "
                         "split); lower --min-per-class or use another --split")
    pairs = [(i, tuple(c for c in s if c in kept)) for i, s in pairs]
    pairs = [(i, s) for i, s in pairs if s]
    ids = [i for i, _ in pairs]
    classes = sorted(kept)
    column = {c: k for k, c in enumerate(classes)}
    Y = indicator([s for _, s in pairs], classes)
    if spec.group_by is None:
        parts = multi_label_parts(Y, spec)
    else:
        rarest = np.array([min(s, key=lambda c: (counts[c], c)) for _, s in pairs], dtype=object)
        parts = grouped_parts(rarest, group_values(collection, ids, spec.group_by), spec)
    everywhere = np.all([Y[parts == p].any(axis=0) for p in SPLITS], axis=0)
    if everywhere.sum() < 2:
        raise BadInput(f"task {task!r}: {int(everywhere.sum())} labels reach train, val and "
                         "test; the task has too few images per label for this split")
    labels = [sep.join(c for c, on in zip(classes, Y[k] & everywhere) if on)
              for k in range(len(ids))]
    keep = [k for k, v in enumerate(labels) if v]
    dropped = {c: n for c, n in sorted(counts.items())
               if c not in kept or not everywhere[column[c]]}
    groups = None if spec.group_by is None else \
        dict(zip([ids[k] for k in keep], group_values(collection, [ids[k] for k in keep],
                                                  spec.group_by)))
    return Split(task, [ids[k] for k in keep], [labels[k] for k in keep],
                 [parts[k] for k in keep], dropped, spec, separator=sep, groups=groups)


# -- what every stage does with a split -------------------------------------------

def subsample(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified ``fraction`` of the rows, at least one per class (pure)."""
    if fraction >= 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        keep.append(rng.choice(rows, size=max(1, round(len(rows) * fraction)), replace=False))
    return np.sort(np.concatenate(keep))


def ids_digest(ids) -> str:
    """Fingerprint of a set of image ids: equal digests, identical evaluation sets."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
