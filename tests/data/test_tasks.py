import numpy as np
import pytest

from featbank.data.collection import Collection
from featbank.data.saved_splits import load_or_make_split, split_path
from featbank.data.tasks import SplitSpec, make_split, stratified_parts


def _collection(counts: dict[str, int], task="style") -> Collection:
    ids, labels = [], []
    for cls, n in counts.items():
        ids += [f"{cls}/{k}.jpg" for k in range(n)]
        labels += [cls] * n
    return Collection(name="c", root=".", ids=ids, labels={task: labels})


def test_every_class_in_every_split_with_the_asked_fractions():
    labels = np.array(["a"] * 100 + ["b"] * 50 + ["c"] * 10, dtype=object)
    parts = stratified_parts(labels, SplitSpec())
    for cls in "abc":
        assert {"train", "val", "test"} == set(parts[labels == cls])
    assert (parts[labels == "a"] == "test").sum() == 10 and (parts[labels == "a"] == "val").sum() == 10
    assert np.array_equal(parts, stratified_parts(labels, SplitSpec()))
    assert not np.array_equal(parts, stratified_parts(labels, SplitSpec(seed=1)))


def test_parse_and_minimum():
    spec = SplitSpec.parse("70/10/20")
    assert (round(spec.train, 3), round(spec.val, 3), round(spec.test, 3)) == (0.7, 0.1, 0.2)
    assert SplitSpec().minimum == 10 and spec.minimum == 10
    assert SplitSpec(min_per_class=25).minimum == 25
    with pytest.raises(ValueError, match="train/val/test"):
        SplitSpec.parse("80-20")
    with pytest.raises(ValueError, match="at least 3"):
        SplitSpec(min_per_class=2)


def test_small_classes_are_dropped_and_reported(tmp_path):
    c = _collection({"a": 30, "b": 12, "rare": 4})
    c.labels["style"][0] = None  # unlabelled images are left out
    split = load_or_make_split(c, "style", SplitSpec(), tmp_path)
    assert split.dropped == {"rare": 4}
    assert split.classes == ["a", "b"] and len(split.ids) == 41
    report = split_path(tmp_path, "style", SplitSpec()).with_suffix(".json").read_text()
    assert '"rare": 4' in report


def test_saved_split_is_reused(tmp_path):
    c = _collection({"a": 30, "b": 30})
    first = load_or_make_split(c, "style", SplitSpec(), tmp_path)
    again = load_or_make_split(c, "style", SplitSpec(seed=0), tmp_path)
    assert again.ids == first.ids and again.parts == first.parts and again.labels == first.labels
    assert again.digest == first.digest


def test_tasks_that_cannot_be_split():
    with pytest.raises(ValueError, match="1 class.*at least two"):
        make_split(_collection({"only": 40}), "style", SplitSpec())
    with pytest.raises(ValueError, match="0 of its 3 classes have at least 10"):
        make_split(_collection({"a": 5, "b": 6, "c": 9}), "style", SplitSpec())
    with pytest.raises(ValueError, match="unknown task 'genre'.*style"):
        make_split(_collection({"a": 20, "b": 20}), "genre", SplitSpec())


def _grouped_collection(n_groups=60, per_group=5, seed=0):
    """Groups (an artist each) whose images mostly share one class."""
    rng = np.random.default_rng(seed)
    ids, labels, groups = [], [], []
    for g in range(n_groups):
        cls = "abc"[g % 3]
        for k in range(per_group):
            ids.append(f"g{g}/{k}.jpg")
            labels.append(cls if rng.random() < 0.9 else "abc"[(g + 1) % 3])
            groups.append(f"artist{g}")
    return Collection(name="c", root=".", ids=ids, labels={"style": labels, "artist": groups})


def test_grouped_split_keeps_every_group_in_one_part(tmp_path):
    c = _grouped_collection()
    spec = SplitSpec(group_by="artist")
    split = load_or_make_split(c, "style", spec, tmp_path)
    path = split_path(tmp_path, "style", spec)
    assert "by-artist" in path.name and path.is_file()
    group_of = dict(zip(c.ids, c.labels["artist"]))
    parts_of_group: dict[str, set] = {}
    for i, p in zip(split.ids, split.parts):
        parts_of_group.setdefault(group_of[i], set()).add(p)
    assert all(len(p) == 1 for p in parts_of_group.values())
    for cls in "abc":  # stratified as far as groups allow: every class everywhere
        assert {p for y, p in zip(split.labels, split.parts) if y == cls} == {"train", "val", "test"}
    n = len(split.ids)
    assert 0.05 * n < split.parts.count("test") < 0.2 * n
    assert path.read_text().splitlines()[0] == "id,label,split,group:artist"
    ungrouped = make_split(c, "style", SplitSpec())
    mixed = {}
    for i, p in zip(ungrouped.ids, ungrouped.parts):
        mixed.setdefault(group_of[i], set()).add(p)
    assert any(len(p) > 1 for p in mixed.values())  # what grouping prevents


def test_grouped_split_errors():
    c = _grouped_collection()
    with pytest.raises(ValueError, match="unknown --group-by column 'nope'"):
        make_split(c, "style", SplitSpec(group_by="nope"))
    few = _grouped_collection(n_groups=6)
    with pytest.raises(ValueError, match="groups cannot be split 10 ways"):
        make_split(few, "style", SplitSpec(group_by="artist"))


def test_grouped_multi_label_split_spreads_rare_labels(tmp_path):
    """Every image has the common label 'a'; whole groups carry 'b' or the rare 'r'.
    Grouped splits stratify on each image's rarest label, so 'r' reaches every part."""
    ids, tags, groups = [], [], []
    for g in range(60):
        for k in range(5):
            ids.append(f"g{g}/{k}.jpg")
            tags.append("a;r" if g % 6 == 0 else "a;b" if g % 2 else "a")
            groups.append(f"object{g}")
    c = Collection(name="c", root=".", ids=ids, labels={"tags": tags, "object": groups},
                   multi_label={"tags": ";"})
    for seed in range(3):
        split = make_split(c, "tags", SplitSpec(group_by="object", seed=seed))
        assert split.classes == ["a", "b", "r"] and not split.dropped
        group_of = dict(zip(c.ids, groups))
        parts_of_group: dict[str, set] = {}
        for i, p in zip(split.ids, split.parts):
            parts_of_group.setdefault(group_of[i], set()).add(p)
        assert all(len(p) == 1 for p in parts_of_group.values())
        rare = {p for y, p in zip(split.labels, split.parts) if "r" in y.split(";")}
        assert rare == {"train", "val", "test"}, seed
