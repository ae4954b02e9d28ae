"""Saved splits, and how they follow the collection.

A task's split is made once (:func:`featbank.data.tasks.make_split`) and saved in
``<cache>/<collection>/splits/<task>__<tag>.csv`` (id, label, part), with a JSON
report beside it. When the collection changes, the saved split follows it, and
no image already assigned ever moves:

- an image whose label changed keeps its part and takes the new label;
- an image new to the task (added, or labelled since) is assigned by a hash of its
  id and the seed (a group-disjoint split: its group's part, a new group by a hash
  of the group's value), so that assignments never depend on the order of arrival;
- an image no longer in the collection, or no longer labelled, leaves;
- a class (a label of a multi-label task) is kept while it has the minimum of
  images and one in every part, and dropped and listed otherwise.

What changed is counted and said. ``resplit`` (``--resplit``) makes a fresh split.
A split's identity is :attr:`Split.digest`, the digest of its (id, label, part)
rows: every result computed on it records it.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from featbank.core.errors import BadInput
from featbank.core.fileio import atomic_path, atomic_write_json, safe_name
from featbank.data.collection import Collection, split_labels
from featbank.data.tasks import SPLITS, Split, SplitSpec, group_values, make_split


@dataclass
class SplitChanges:
    """How a saved split followed its collection."""

    relabelled: int = 0
    removed: int = 0
    added: int = 0
    moved: int = 0  # a grouped split: images that changed group, following it
    classes_dropped: tuple[str, ...] = ()
    classes_added: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.relabelled or self.removed or self.added or self.moved
                    or self.classes_dropped or self.classes_added)

    def __str__(self) -> str:
        said = [f"{n} {what}" for n, what in (
            (self.relabelled, "relabelled (each kept its part)"),
            (self.removed, "no longer in the task (left the split)"),
            (self.added, "new (assigned by a hash of id and seed)"),
            (self.moved, "changed group (followed it)")) if n]
        if self.classes_dropped:
            said.append(f"classes dropped: {', '.join(self.classes_dropped)}")
        if self.classes_added:
            said.append(f"classes added: {', '.join(self.classes_added)}")
        return "; ".join(said)


def split_path(folder: Path, task: str, spec: SplitSpec) -> Path:
    return folder / "splits" / f"{safe_name(task)}__{spec.tag}.csv"


def load_or_make_split(collection: Collection, task: str, spec: SplitSpec, folder: Path, *,
                       resplit: bool = False, warn=None) -> Split:
    """The saved split of ``task``, following the collection as it is now (made and saved
    on first use, or afresh with ``resplit``); ``warn`` hears what changed."""
    path = split_path(folder, task, spec)
    separator = collection.multi_label.get(task)
    if path.is_file() and not resplit:
        saved = read_split(path, task, spec, separator)
        split, changes = follow(saved, collection)
        if changes:
            _write(path, split, collection)
            if warn is not None:
                warn(f"the split of task {task!r} ({spec.tag}) follows the collection: {changes}")
        return split
    split = make_split(collection, task, spec)
    _write(path, split, collection)
    if resplit and warn is not None:
        warn(f"task {task!r}: a fresh split ({spec.tag}) replaces the saved one (--resplit)")
    return split


def hash_part(key: str, spec: SplitSpec) -> str:
    """The part a hash of ``key`` and the seed gives, with the split's fractions."""
    digest = hashlib.sha256(f"{spec.seed}\0{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2 ** 64
    return "test" if u < spec.test else "val" if u < spec.test + spec.val else "train"


def follow(saved: Split, collection: Collection) -> tuple[Split, SplitChanges]:
    """``saved`` as the collection now has it (the rules in the module docstring)."""
    task, spec = saved.task, saved.spec
    multi = saved.separator is not None
    labels_now = dict(zip(collection.ids, collection.label_sets(task) if multi
                          else collection.labels[task]))
    labelled = [i for i in collection.ids if labels_now[i]]
    part_was = dict(zip(saved.ids, saved.parts))
    label_was = dict(zip(saved.ids, saved.labels))
    parts, groups, moved = _parts(saved, collection, labelled, part_was)
    if multi:
        split = _multi_label(saved, labelled, labels_now, parts)
    else:
        split = _single_label(saved, labelled, labels_now, parts)
    if groups is not None:
        split.groups = {i: groups[i] for i in split.ids}
    if len(split.classes) < 2:
        raise BadInput(f"task {task!r}: {len(split.classes)} class(es) of the collection as it "
                       f"is now reach train, val and test with {spec.minimum} images; a "
                       "classifier needs at least two (--resplit makes a fresh split)")
    now = dict(zip(split.ids, split.labels))
    was_classes, now_classes = set(saved.classes), set(split.classes)
    changes = SplitChanges(
        relabelled=sum(1 for i in now if i in label_was and label_was[i] != now[i]),
        removed=sum(1 for i in label_was if i not in now),
        added=sum(1 for i in now if i not in part_was), moved=moved,
        classes_dropped=tuple(sorted(was_classes - now_classes)),
        classes_added=tuple(sorted(now_classes - was_classes)))
    return split, changes


def _parts(saved: Split, collection: Collection, ids: list[str], part_was: dict):
    """Each id's part (a grouped split: its group's, the images following their group),
    each id's group (None for an ungrouped split), and how many assigned images moved."""
    spec = saved.spec
    if spec.group_by is None:
        return {i: part_was.get(i) or hash_part(i, spec) for i in ids}, None, 0
    groups = dict(zip(ids, group_values(collection, ids, spec.group_by)))
    group_was = saved.groups or {}
    part_of_group: dict[str, str] = {}
    for i, part in part_was.items():
        if i in group_was:
            part_of_group.setdefault(group_was[i], part)
    parts = {i: part_of_group.get(groups[i]) or hash_part(f"group:{groups[i]}", spec)
             for i in ids}
    moved = sum(1 for i in ids if i in part_was and parts[i] != part_was[i])
    return parts, groups, moved


def _single_label(saved: Split, ids, labels_now, parts) -> Split:
    minimum = saved.spec.minimum
    counts: dict[str, dict[str, int]] = {}
    for i in ids:
        counts.setdefault(labels_now[i], {p: 0 for p in SPLITS})[parts[i]] += 1
    kept = {c for c, n in counts.items() if sum(n.values()) >= minimum and min(n.values()) > 0}
    chosen = [i for i in ids if labels_now[i] in kept]
    dropped = {c: sum(n.values()) for c, n in sorted(counts.items()) if c not in kept}
    return Split(saved.task, chosen, [labels_now[i] for i in chosen],
                 [parts[i] for i in chosen], dropped, saved.spec)


def _multi_label(saved: Split, ids, labels_now, parts) -> Split:
    minimum, sep = saved.spec.minimum, saved.separator
    counts: dict[str, dict[str, int]] = {}
    for i in ids:
        for c in labels_now[i]:
            counts.setdefault(c, {p: 0 for p in SPLITS})[parts[i]] += 1
    kept = {c for c, n in counts.items() if sum(n.values()) >= minimum and min(n.values()) > 0}
    rows = [(i, sep.join(c for c in labels_now[i] if c in kept)) for i in ids]
    rows = [(i, v) for i, v in rows if v]
    dropped = {c: sum(n.values()) for c, n in sorted(counts.items()) if c not in kept}
    chosen = [i for i, _ in rows]
    return Split(saved.task, chosen, [v for _, v in rows], [parts[i] for i in chosen],
                 dropped, saved.spec, separator=sep)


def read_split(path: Path, task: str, spec: SplitSpec, separator: str | None) -> Split:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    report_path = path.with_suffix(".json")
    dropped = json.loads(report_path.read_text())["dropped_classes"] if report_path.is_file() else {}
    column = f"group:{spec.group_by}" if spec.group_by else None
    groups = {r["id"]: r[column] or f"image:{r['id']}" for r in rows} \
        if column and rows and column in rows[0] else None
    if separator is not None:  # labels as saved, in the collection's normal form
        for r in rows:
            r["label"] = separator.join(split_labels(r["label"], separator))
    return Split(task, [r["id"] for r in rows], [r["label"] for r in rows],
                 [r["split"] for r in rows], dropped, spec, separator, groups=groups)


def _write(path: Path, split: Split, collection: Collection) -> None:
    spec = split.spec
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        if spec.group_by is None:
            writer.writerow(["id", "label", "split"])
            writer.writerows(zip(split.ids, split.labels, split.parts))
        else:  # the grouping column too, so anyone can check that no group straddles parts
            group_of = dict(zip(collection.ids, collection.labels[spec.group_by]))
            writer.writerow(["id", "label", "split", f"group:{spec.group_by}"])
            writer.writerows(zip(split.ids, split.labels, split.parts,
                                 (group_of.get(i) or "" for i in split.ids)))
    report = {"task": split.task, "fractions": [spec.train, spec.val, spec.test],
              "seed": spec.seed, "group_by": spec.group_by,
              "multi_label_separator": split.separator, "min_per_class": spec.minimum,
              "n_images": len(split.ids), "n_classes": len(split.classes),
              "classes": split.classes, "per_split": {p: split.parts.count(p) for p in SPLITS},
              "dropped_classes": split.dropped,
              "dropped_images": sum(split.dropped.values()), "sha256": split.digest}
    atomic_write_json(path.with_suffix(".json"), report)



def follow_saved(collection: Collection, folder: Path, warn) -> None:
    """Make every saved split of the collection follow it as it is now (``extract.py`` calls
    this when it rescans a collection, so that a saved split always describes the
    collection of the last extraction); ``warn`` hears what changed or cannot follow."""
    for report in sorted((folder / "splits").glob("*.json")):
        try:
            meta = json.loads(report.read_text())
            train, val, test = meta["fractions"]
            spec = SplitSpec(train, val, test, seed=meta["seed"], group_by=meta["group_by"],
                             min_per_class=meta["min_per_class"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a split's report
        task = meta["task"]
        if task not in collection.labels or (spec.group_by and
                                             spec.group_by not in collection.labels):
            continue
        try:
            load_or_make_split(collection, task, spec, folder, warn=warn)
        except BadInput as err:
            warn(f"the saved split of task {task!r} ({spec.tag}) cannot follow the collection: "
                 f"{err}")
