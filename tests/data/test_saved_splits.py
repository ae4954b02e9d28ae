"""A saved split follows its collection: relabelled images keep their part, new images
are assigned by a hash of id and seed, removed ones leave, classes are kept only while
they reach every part; nothing already assigned moves, and what changed is said."""
import numpy as np
import pytest

from featbank.data.collection import Collection
from featbank.data.saved_splits import hash_part, load_or_make_split, split_path
from featbank.data.tasks import SplitSpec, make_split


def _collection(counts: dict[str, int], extra: dict[str, list] | None = None) -> Collection:
    ids, labels = [], []
    for cls, n in counts.items():
        ids += [f"{cls}/{k:03d}.jpg" for k in range(n)]
        labels += [cls] * n
    order = np.argsort(ids)
    ids, labels = [ids[k] for k in order], [labels[k] for k in order]
    return Collection(name="c", root=".", ids=ids, labels={"style": labels, **(extra or {})})


def _with(c: Collection, ids: list[str], labels: list) -> Collection:
    return Collection(name=c.name, root=c.root, ids=ids, labels={"style": labels})


def test_relabelled_removed_and_new_images(tmp_path):
    c = _collection({"a": 40, "b": 40, "c": 40})
    first = load_or_make_split(c, "style", SplitSpec(), tmp_path)
    part = dict(zip(first.ids, first.parts))
    labels = dict(zip(c.ids, c.labels["style"]))
    moved = c.ids[:6]  # six images of class a relabelled b
    for i in moved:
        labels[i] = "b"
    removed = c.ids[-4:]
    new = [f"new/{k}.jpg" for k in range(5)]
    ids = sorted([i for i in c.ids if i not in removed] + new)
    labels.update({i: "c" for i in new})
    notes = []
    split = load_or_make_split(_with(c, ids, [labels[i] for i in ids]), "style", SplitSpec(),
                               tmp_path, warn=notes.append)
    now = dict(zip(split.ids, zip(split.labels, split.parts)))
    assert all(now[i] == ("b", part[i]) for i in moved)  # new label, same part
    assert not set(removed) & set(now)
    assert all(now[i] == ("c", hash_part(i, SplitSpec())) for i in new)
    assert all(now[i][1] == part[i] for i in now if i in part)  # nothing assigned moved
    assert split.digest != first.digest
    [note] = notes
    assert "6 relabelled (each kept its part)" in note and "4 no longer in the task" in note
    assert "5 new (assigned by a hash of id and seed)" in note
    again = load_or_make_split(_with(c, ids, [labels[i] for i in ids]), "style", SplitSpec(),
                               tmp_path, warn=notes.append)
    assert again.digest == split.digest and len(notes) == 1  # saved: nothing more to say


def test_new_images_are_assigned_whatever_order_they_arrive_in(tmp_path):
    c = _collection({"a": 30, "b": 30})
    new = [f"new/{k}.jpg" for k in range(40)]
    orders = []
    for name, batches in (("one", [new[:20], new[20:]]), ("two", [new[20:], new[:20]])):
        load_or_make_split(c, "style", SplitSpec(), tmp_path / name)
        ids = list(c.ids)
        for batch in batches:
            ids = sorted(ids + batch)
            split = load_or_make_split(_with(c, ids, ["a" if i.startswith("a") else "b"
                                                      for i in ids]), "style", SplitSpec(),
                                       tmp_path / name)
        orders.append(dict(zip(split.ids, split.parts)))
    assert orders[0] == orders[1]
    parts = [orders[0][i] for i in new]
    assert {"train", "val", "test"} == set(parts)  # the hash spreads them by the fractions


def test_a_class_that_no_longer_reaches_every_part_is_dropped_and_said(tmp_path):
    c = _collection({"a": 40, "b": 40, "c": 12})
    first = load_or_make_split(c, "style", SplitSpec(), tmp_path)
    tested = [i for i, y, p in zip(first.ids, first.labels, first.parts) if y == "c" and p == "test"]
    ids = [i for i in c.ids if i not in tested]  # class c loses its test images
    notes = []
    split = load_or_make_split(_with(c, ids, [i.split("/")[0] for i in ids]), "style",
                               SplitSpec(), tmp_path, warn=notes.append)
    assert split.classes == ["a", "b"] and "c" in split.dropped
    assert "classes dropped: c" in notes[0]


def test_resplit_makes_a_fresh_split(tmp_path):
    c = _collection({"a": 30, "b": 30})
    load_or_make_split(c, "style", SplitSpec(), tmp_path)
    labels = ["b" if k % 7 == 0 else y for k, y in enumerate(c.labels["style"])]
    changed = _with(c, c.ids, labels)
    fresh = load_or_make_split(changed, "style", SplitSpec(), tmp_path, resplit=True)
    made = make_split(changed, "style", SplitSpec())
    assert fresh.parts == made.parts and fresh.digest == made.digest
    assert split_path(tmp_path, "style", SplitSpec()).is_file()


def test_a_grouped_split_stays_disjoint_and_a_new_image_joins_its_group(tmp_path):
    groups = [f"artist{k % 30}" for k in range(90)]  # each artist in every class
    c = _collection({"a": 30, "b": 30, "c": 30}, {"artist": groups})
    spec = SplitSpec(group_by="artist")
    first = load_or_make_split(c, "style", spec, tmp_path)
    part_of_group = {g: p for g, p in zip((dict(zip(c.ids, groups))[i] for i in first.ids),
                                          first.parts)}
    ids = sorted(c.ids + ["a/new.jpg", "b/newgroup.jpg"])
    group_of = {**dict(zip(c.ids, groups)), "a/new.jpg": "artist3", "b/newgroup.jpg": "artistX"}
    grown = Collection(name="c", root=".", ids=ids,
                       labels={"style": [i.split("/")[0] for i in ids],
                               "artist": [group_of[i] for i in ids]})
    split = load_or_make_split(grown, "style", spec, tmp_path)
    now = dict(zip(split.ids, split.parts))
    assert now["a/new.jpg"] == part_of_group["artist3"]
    assert now["b/newgroup.jpg"] == hash_part("group:artistX", spec)
    parts_of: dict[str, set] = {}
    for i, p in now.items():
        parts_of.setdefault(group_of[i], set()).add(p)
    assert all(len(p) == 1 for p in parts_of.values())


def test_a_multi_label_task_follows_its_labels(tmp_path):
    ids = [f"img/{k:03d}.jpg" for k in range(120)]
    tags = [";".join(t for t, on in (("x", k % 2 == 0), ("y", k % 3 == 0), ("z", True)) if on)
            for k in range(120)]
    c = Collection(name="c", root=".", ids=ids, labels={"tags": tags}, multi_label={"tags": ";"})
    first = load_or_make_split(c, "tags", SplitSpec(), tmp_path)
    part = dict(zip(first.ids, first.parts))
    tags[1] = "x;z"  # a tag added by a cataloguer
    split = load_or_make_split(Collection(name="c", root=".", ids=ids, labels={"tags": tags},
                                          multi_label={"tags": ";"}), "tags", SplitSpec(),
                               tmp_path)
    now = dict(zip(split.ids, zip(split.labels, split.parts)))
    assert now["img/001.jpg"] == ("x;z", part["img/001.jpg"])


def test_a_collection_that_leaves_one_class_is_refused_in_one_line(tmp_path):
    c = _collection({"a": 30, "b": 30})
    load_or_make_split(c, "style", SplitSpec(), tmp_path)
    with pytest.raises(ValueError, match="1 class.*--resplit"):
        load_or_make_split(_with(c, c.ids, ["a"] * 60), "style", SplitSpec(), tmp_path)
