import h5py
import numpy as np
import pytest

from featbank.store.features import read_features
from featbank.store.provenance import feature_path
from featbank.store.shards import shard_files, shard_number
from featbank.store.writer import FeatureWriter


def _numbers(folder):
    """The numbers of the shards in ``folder``, oldest first (layouts left out)."""
    return [shard_number(p.name) for p in shard_files(folder)]

ATTRS = {"backbone": "toy", "feature_dim": 3, "weights": "random", "input_size": 8,
         "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "squash", "crop_pct": 1.0,
         "interpolation": "bilinear", "dtype": "float32", "collection": "c",
         "featbank_version": "0", "torch_version": "0", "created": "today"}


def test_rows_order_and_attributes_round_trip(tmp_path):
    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    out.add_batch(["b/1.jpg", "a/2.jpg"], np.array([[1, 2, 3], [4, 5, 6]], np.float32))
    out.add_batch(["c/3.jpg"], np.array([[7, 8, 9]], np.float32), {"bad.jpg": "truncated"})
    assert out.merge() == 3
    data = read_features(tmp_path / "f.h5")
    assert data.ids == ["b/1.jpg", "a/2.jpg", "c/3.jpg"]
    assert data.X.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert data.skipped == {"bad.jpg": "truncated"}
    assert data.provenance["backbone"] == "toy" and data.provenance["feature_dim"] == 3
    assert not out.parts.exists()
    with h5py.File(tmp_path / "f.h5") as f:  # plain h5py reads the contract
        assert f["features"].dtype == np.float32 and f["ids"].asstr()[0] == "b/1.jpg"


def test_what_is_stored_counts_rows_and_skipped_images_with_their_stamps(tmp_path):
    from featbank.core.hashing import Stamp

    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    out.add_batch(["x"], np.zeros((1, 3), np.float32), {"y": "bad"},
                  stamps=[Stamp(10, 20, "ab" * 32)], skipped_stamps={"y": Stamp(5, 6)})
    out.merge()
    stored = out.stored()
    assert stored.rows == {"x": 0} and stored.stamp(0) == Stamp(10, 20)
    assert stored.sha256([0]) == ["ab" * 32] and stored.skipped == {"y": Stamp(5, 6)}


def test_merge_appends_and_ignores_rows_already_merged(tmp_path):
    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    out.add_batch(["x"], np.ones((1, 3), np.float32))
    out.merge()
    # A run that died after renaming the merged file but before dropping its parts:
    out.add_batch(["x", "w"], np.full((2, 3), 2, np.float32))
    out.merge()
    data = read_features(tmp_path / "f.h5")
    assert data.ids == ["x", "w"] and data.X[0].tolist() == [1, 1, 1]
    # ids longer than any stored, and a repeat within one batch, are told apart too
    out.add_batch(["a/longer-than-stored.jpg", "w", "x", "a/longer-than-stored.jpg"],
                  np.full((4, 3), 3, np.float32))
    out.merge()
    data = read_features(tmp_path / "f.h5")
    assert data.ids == ["x", "w", "a/longer-than-stored.jpg"]
    assert data.X[:2].tolist() == [[1, 1, 1], [2, 2, 2]]


def _one_row(path, attrs=ATTRS):
    out = FeatureWriter(path, attrs)
    out.add_batch(["x"], np.ones((1, 3), np.float32))
    out.merge()


def test_a_file_appears_only_when_it_holds_rows(tmp_path):
    assert FeatureWriter(tmp_path / "f.h5", ATTRS).merge() == 0
    assert not (tmp_path / "f.h5").exists()


def test_other_exact_weights_are_never_mixed_in(tmp_path):
    pinned = {**ATTRS, "weights": "imagenet", "weights_exact": "torchvision:toy.IMAGENET1K_V1"}
    _one_row(tmp_path / "f.h5", pinned)
    with pytest.raises(ValueError, match="weights_exact='torchvision:toy.IMAGENET1K_V1'.*V2"):
        FeatureWriter(tmp_path / "f.h5", {**pinned, "weights_exact": "torchvision:toy.IMAGENET1K_V2"}
                    ).check_compatible()
    FeatureWriter(tmp_path / "f.h5", pinned).check_compatible()
    # A file from before weights_exact: random and file weights were exact already.
    _one_row(tmp_path / "old.h5")
    FeatureWriter(tmp_path / "old.h5", {**ATTRS, "weights_exact": "random:seed0"}).check_compatible()


def test_other_provenance_is_never_mixed_in(tmp_path):
    _one_row(tmp_path / "f.h5")
    with pytest.raises(ValueError, match="made with input_size=8; this run would make them with "
                                         "input_size=224.*--force-new"):
        FeatureWriter(tmp_path / "f.h5", {**ATTRS, "input_size": 224}).check_compatible()
    with pytest.raises(ValueError, match="weights"):
        FeatureWriter(tmp_path / "f.h5", {**ATTRS, "weights": "imagenet"}).check_compatible()
    FeatureWriter(tmp_path / "f.h5", {**ATTRS, "created": "later"}).check_compatible()


def test_float16_storage(tmp_path):
    out = FeatureWriter(tmp_path / "f.h5", {**ATTRS, "dtype": "float16"})
    out.add_batch(["x"], np.array([[1.5, 2, 3]], np.float32))
    out.merge()
    assert read_features(tmp_path / "f.h5").X.dtype == np.float16


def test_feature_path_names():
    assert feature_path("cache", "demo", "timm:resnet10t", "sha256:" + "ab" * 32).name == \
        "timm-resnet10t__sha256-abababababab.h5"
    assert feature_path("cache", "demo", "vgg19", "imagenet").as_posix() == \
        "cache/demo/features/vgg19__imagenet.h5"


def _grow(out: FeatureWriter, first: int, n: int) -> None:
    ids = [f"img/{k}.jpg" for k in range(first, first + n)]
    out.add_batch(ids, np.arange(first * 3, (first + n) * 3, dtype=np.float32).reshape(n, 3))
    out.merge()


def test_adding_rows_leaves_stored_vectors_untouched(tmp_path, monkeypatch):
    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    _grow(out, 0, 5)
    [first_shard] = shard_files(tmp_path / "f.h5.shards")
    before = first_shard.stat()
    _grow(out, 5, 2)
    after = first_shard.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    monkeypatch.chdir(tmp_path / "f.h5.shards")  # shards resolve next to the file, not the cwd
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["features"].shape == (7, 3) and f["ids"].asstr()[6] == "img/6.jpg"
        assert f["features"][:].ravel().tolist() == list(range(21))


def test_missing_shard_is_refused_not_read_as_nan(tmp_path):
    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    _grow(out, 0, 2)
    for shard in shard_files(tmp_path / "f.h5.shards"):
        shard.unlink()
    with pytest.raises(ValueError, match="its shard 000000-[0-9a-f]{8}.h5 is missing"):
        read_features(tmp_path / "f.h5")


def test_shards_are_joined_past_the_limit_and_orphans_dropped(tmp_path, monkeypatch):
    import featbank.store.layout as cache

    monkeypatch.setattr(cache, "MAX_SHARDS", 3)
    monkeypatch.setattr(cache, "SHARD_GRACE", 0)  # superseded shards go at once
    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    (tmp_path / "f.h5.shards").mkdir()
    (tmp_path / "f.h5.shards" / "000000.h5").write_bytes(b"left by a killed fold")
    for k in range(5):
        _grow(out, 2 * k, 2)
        assert len(shard_files(tmp_path / "f.h5.shards")) <= 3
    data = read_features(tmp_path / "f.h5")
    assert data.ids == [f"img/{k}.jpg" for k in range(10)]
    assert data.X.ravel().tolist() == list(range(30))


def test_a_file_written_before_shards_is_grown(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:  # the earlier layout: plain datasets
        f["features"] = np.zeros((2, 3), np.float32)
        f.create_dataset("ids", data=["old/0.jpg", "old/1.jpg"], dtype=h5py.string_dtype())
        f.create_dataset("skipped_ids", data=["bad.gif"], dtype=h5py.string_dtype())
        f.create_dataset("skipped_reasons", data=["not an image"], dtype=h5py.string_dtype())
        f.attrs.update({k: v for k, v in ATTRS.items()})
    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    _grow(out, 0, 1)
    data = read_features(tmp_path / "f.h5")
    assert data.ids == ["old/0.jpg", "old/1.jpg", "img/0.jpg"]
    assert data.X.tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 2]]
    assert data.skipped == {"bad.gif": "not an image"}


def test_the_parts_a_run_wrote_become_its_shard_without_being_read_back(tmp_path, monkeypatch):
    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    out.add_batch(["a"], np.ones((1, 3), np.float32))
    out.merge()
    out.add_batch(["b", "a"], np.array([[2, 2, 2], [9, 9, 9]], np.float32), {"c": "truncated"})
    out.add_batch(["d"], np.full((1, 3), 4, np.float32))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("a part was read back"))
    assert out.merge() == 2
    monkeypatch.undo()
    data = read_features(tmp_path / "f.h5")
    assert data.ids == ["a", "b", "d"] and data.skipped == {"c": "truncated"}
    assert data.X.tolist() == [[1, 1, 1], [2, 2, 2], [4, 4, 4]]
    assert _numbers(out.shards) == [0, 1]


def test_a_run_that_compacts_writes_its_rows_once(tmp_path, monkeypatch):
    """Past MAX_SHARDS the run's live shard starts with the stored rows and becomes the
    one shard; its parts are not read back."""
    import featbank.store.layout as cache

    monkeypatch.setattr(cache, "MAX_SHARDS", 3)
    monkeypatch.setattr(cache, "SHARD_GRACE", 0)
    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    for k in range(3):
        _grow(out, 2 * k, 2)
    assert len(shard_files(out.shards)) == 3
    out.add_batch(["img/6.jpg"], np.full((1, 3), 6, np.float32), {"bad.gif": "not an image"})
    out.add_batch(["img/7.jpg", "img/0.jpg"], np.array([[7, 7, 7], [9, 9, 9]], np.float32))
    with monkeypatch.context() as no_reading:
        no_reading.setattr(np, "load", lambda *a, **k: pytest.fail("a part was read back"))
        assert out.merge() == 2
    [shard] = shard_files(out.shards)
    data = read_features(tmp_path / "f.h5")
    assert data.ids == [f"img/{k}.jpg" for k in range(6)] + ["img/6.jpg", "img/7.jpg"]
    assert data.X[:, 0].tolist() == [0, 3, 6, 9, 12, 15, 6, 7]
    assert data.skipped == {"bad.gif": "not an image"}
    _grow(out, 8, 1)  # and the next run adds a shard again
    assert len(shard_files(out.shards)) == 2 and len(read_features(tmp_path / "f.h5").ids) == 9


def test_parts_of_a_killed_run_are_read_back_and_its_live_shard_dropped(tmp_path):
    killed = FeatureWriter(tmp_path / "f.h5", ATTRS)
    killed.add_batch(["a"], np.ones((1, 3), np.float32))
    killed.add_batch(["b"], np.full((1, 3), 2, np.float32))
    del killed  # its live shard stays behind as a .tmp file, as after a kill
    assert len(list((tmp_path / "f.h5.shards").glob("*.tmp"))) == 1
    resumed = FeatureWriter(tmp_path / "f.h5", ATTRS)
    assert resumed.merge() == 2
    resumed.add_batch(["c"], np.full((1, 3), 3, np.float32))
    assert resumed.merge() == 1
    data = read_features(tmp_path / "f.h5")
    assert data.ids == ["a", "b", "c"] and data.X[:, 0].tolist() == [1, 2, 3]
    assert _numbers(resumed.shards) == [0, 1]


def test_a_live_shard_is_not_used_when_other_parts_are_pending(tmp_path):
    FeatureWriter(tmp_path / "f.h5", ATTRS).add_batch(["a"], np.ones((1, 3), np.float32))
    out = FeatureWriter(tmp_path / "f.h5", ATTRS)  # added to without merging what was left
    out.add_batch(["b"], np.full((1, 3), 2, np.float32))
    assert out.merge() == 2
    data = read_features(tmp_path / "f.h5")
    assert data.ids == ["a", "b"] and data.X[:, 0].tolist() == [1, 2]
    assert not list(out.shards.glob("*.tmp"))


def test_a_reader_of_the_previous_main_file_still_reads_after_a_compaction(tmp_path,
                                                                           monkeypatch):
    """Compaction leaves the shards it supersedes in place for SHARD_GRACE seconds: a
    reader that opened the main file just before it was replaced reads its rows, not NaN."""
    import featbank.store.layout as cache

    monkeypatch.setattr(cache, "MAX_SHARDS", 2)
    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    _grow(out, 0, 2)
    _grow(out, 2, 2)
    with h5py.File(tmp_path / "f.h5", "r") as before:  # opened, not read yet
        _grow(FeatureWriter(tmp_path / "f.h5", ATTRS), 4, 2)  # joins every shard into one
        assert before["features"][:].ravel().tolist() == list(range(12))
    assert len(read_features(tmp_path / "f.h5").ids) == 6
    monkeypatch.setattr(cache, "SHARD_GRACE", 0)
    _grow(FeatureWriter(tmp_path / "f.h5", ATTRS), 6, 1)  # past the grace: gone
    assert len(shard_files(tmp_path / "f.h5.shards")) == 2


def test_iter_rows_streams_a_file_in_chunks_in_file_order(tmp_path):
    from featbank.store.features import iter_rows

    out = FeatureWriter(tmp_path / "f.h5", ATTRS)
    ids = [f"Müller/{k}.jpg" for k in range(7)]
    out.add_batch(ids[:4], np.arange(12, dtype=np.float32).reshape(4, 3))
    out.merge()
    out.add_batch(ids[4:], np.arange(12, 21, dtype=np.float32).reshape(3, 3))
    out.merge()
    chunks = list(iter_rows(tmp_path / "f.h5", chunk=3))
    assert [len(i) for i, _ in chunks] == [3, 3, 1]
    assert sum((i for i, _ in chunks), []) == ids
    assert np.array_equal(np.concatenate([X for _, X in chunks]),
                          np.arange(21, dtype=np.float32).reshape(7, 3))
