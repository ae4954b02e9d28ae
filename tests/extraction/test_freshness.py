"""A feature file follows the bytes of its images: a changed image is extracted again, a
touched or copied one keeps its row, a removed one leaves the file, an undecodable one
is tried again once it changes, and rows from before stamps take their images' own."""
import os
import shutil

import h5py
import numpy as np
import pytest
from helpers import make_image

from featbank.data.collection import from_folder
from featbank.extraction.engine import ExtractConfig, extract
from featbank.store.features import read_features


def _config(tmp_path, cache="cache", **kw):
    settings = dict(backbones="squeezenet1_1", weights="random",
                    cache_root=str(tmp_path / cache), batch_size=4, workers=0, progress=False,
                    device="cpu")
    return ExtractConfig(**{**settings, **kw})


def _rows(report):
    data = read_features(report.path)
    return dict(zip(data.ids, data.X))


def _fresh(tmp_path, folder, name):
    """Features of the collection as it is now, in a cache of their own."""
    [report] = extract(from_folder(folder), _config(tmp_path, cache=name))
    return _rows(report)


@pytest.fixture
def counted_reads(monkeypatch):
    import featbank.extraction.loader as loader

    reads = []
    real = loader.read_stamped
    monkeypatch.setattr(loader, "read_stamped", lambda p: reads.append(p.name) or real(p))
    return reads


def test_images_overwritten_under_their_names_are_extracted_again(tmp_path, image_folder,
                                                                 capsys):
    extract(from_folder(image_folder), _config(tmp_path))
    changed = [image_folder / "cats" / f"img{k}.jpg" for k in range(4)] + \
        [image_folder / "dogs" / f"img{k}.jpg" for k in range(4)]
    for k, path in enumerate(changed):  # other pictures, the same file names
        make_image(path, seed=500 + k, quality=95)
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    assert report.n_changed == 8 and report.n_rows == 12 and report.n_added == 0
    assert "8 images changed since their rows were computed" in capsys.readouterr().err
    ours, fresh = _rows(report), _fresh(tmp_path, image_folder, "fresh")
    assert sorted(ours) == sorted(fresh)
    for image_id, row in fresh.items():
        np.testing.assert_allclose(ours[image_id], row, rtol=1e-5, atol=1e-6)
    [again] = extract(from_folder(image_folder), _config(tmp_path))
    assert again.n_changed == again.n_added == 0


def test_a_touched_or_copied_image_keeps_its_row_and_is_read_once(tmp_path, image_folder,
                                                                  counted_reads):
    [first] = extract(from_folder(image_folder), _config(tmp_path))
    before = _rows(first)
    touched = image_folder / "cats" / "img0.jpg"
    os.utime(touched, (1_000_000, 1_000_000))  # another mtime, the same bytes
    copied = image_folder / "dogs" / "img1.jpg"
    shutil.copy(copied, tmp_path / "x.jpg")
    shutil.move(tmp_path / "x.jpg", copied)  # a copy put in its place: new mtime and inode
    counted_reads.clear()
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    assert report.n_changed == 0 and report.n_touched == 2 and counted_reads == []
    after = _rows(report)
    assert all(np.array_equal(before[i], after[i]) for i in before)
    with h5py.File(report.path) as f:  # the new stamp is recorded: no hashing next time
        row = list(f["ids"].asstr()[:]).index("cats/img0.jpg")
        assert f["file_mtime_ns"][row] == os.stat(touched).st_mtime_ns
    [again] = extract(from_folder(image_folder), _config(tmp_path))
    assert again.n_touched == 0


def test_removed_and_moved_images_leave_the_file(tmp_path, image_folder):
    extract(from_folder(image_folder), _config(tmp_path))
    (image_folder / "cats" / "img5.jpg").unlink()
    (image_folder / "dogs").joinpath("img0.jpg").rename(image_folder / "cats" / "moved.jpg")
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    data = read_features(report.path)
    assert report.n_removed == 2 and report.n_added == 1
    assert sorted(data.ids) == from_folder(image_folder).ids
    fresh = _fresh(tmp_path, image_folder, "fresh")
    np.testing.assert_allclose(data.X[data.ids.index("cats/moved.jpg")], fresh["cats/moved.jpg"],
                               rtol=1e-5, atol=1e-6)


def test_prune_frees_the_space_of_rows_taken_out(tmp_path, image_folder):
    from featbank.store.shards import shard_files

    extract(from_folder(image_folder), _config(tmp_path))
    for k in range(3):
        (image_folder / "cats" / f"img{k}.jpg").unlink()
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    folder = report.path.with_name(report.path.name + ".shards")
    with h5py.File(shard_files(folder)[0]) as f:
        assert f["features"].shape[0] == 12  # taken out of the file, still on disk
    [report] = extract(from_folder(image_folder), _config(tmp_path, prune=True))
    [shard] = shard_files(folder)
    with h5py.File(shard) as f:
        assert f["features"].shape[0] == 9
    assert len(read_features(report.path).ids) == 9


def test_an_undecodable_image_is_tried_again_once_it_changes(tmp_path, image_folder,
                                                             counted_reads):
    broken = image_folder / "dogs" / "broken.jpg"
    broken.write_bytes(b"not an image")
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    assert report.n_skipped == 1
    counted_reads.clear()
    extract(from_folder(image_folder), _config(tmp_path))
    assert "broken.jpg" not in counted_reads  # unchanged: not tried again
    make_image(broken, seed=77, quality=95)  # fixed
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    data = read_features(report.path)
    assert "dogs/broken.jpg" in data.ids and report.n_skipped == 0
    broken.write_bytes(b"broken again")  # its row goes: it no longer holds that image
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    assert "dogs/broken.jpg" not in read_features(report.path).ids and report.n_skipped == 1


def test_verify_images_finds_a_change_that_keeps_size_and_mtime(tmp_path, image_folder):
    extract(from_folder(image_folder), _config(tmp_path))
    path = image_folder / "cats" / "img2.jpg"
    stat = os.stat(path)
    data = bytearray(path.read_bytes())
    other = bytearray((image_folder / "cats" / "img3.jpg").read_bytes())
    data[:] = (other + bytes(len(data)))[:len(data)] if len(other) < len(data) else other[:len(data)]
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as they were
    [plain] = extract(from_folder(image_folder), _config(tmp_path))
    assert plain.n_changed == 0  # the cheap test cannot see it
    [verified] = extract(from_folder(image_folder), _config(tmp_path, verify_images=True))
    assert verified.n_changed == 1


def test_rows_from_before_stamps_take_their_images_stamps(tmp_path, image_folder, capsys):
    """A file written by a featbank that recorded no stamps (format 1) keeps its rows."""
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    rows = _rows(report)
    with h5py.File(report.path, "r") as f:
        attrs = {k: v for k, v in f.attrs.items()
                 if k not in ("format", "layout", "content_sha256")}
        ids = list(f["ids"].asstr()[:])
        X = f["features"][:]
    shutil.rmtree(report.path.with_name(report.path.name + ".shards"))
    with h5py.File(report.path, "w") as f:  # format 0: plain datasets, no stamps
        f["features"] = X
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
        f.create_dataset("skipped_ids", data=[], dtype=h5py.string_dtype())
        f.create_dataset("skipped_reasons", data=[], dtype=h5py.string_dtype())
        f.attrs.update(attrs)
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    assert report.n_added == report.n_changed == 0
    assert "12 rows written before image stamps were recorded" in capsys.readouterr().err
    after = _rows(report)
    assert all(np.array_equal(rows[i], after[i]) for i in rows)
    make_image(image_folder / "cats" / "img0.jpg", seed=900, quality=95)
    [report] = extract(from_folder(image_folder), _config(tmp_path))
    assert report.n_changed == 1  # its stamp was recorded, so its change is seen


def test_a_backbone_s_pixels_do_not_depend_on_the_company_it_keeps(tmp_path):
    """JPEG draft decoding sizes each view to its own backbone: squeezenet1_1 (224) alone
    and beside inception_v3 (299) gives bitwise-equal features."""
    folder = tmp_path / "big"
    for k in range(3):  # 224 drafts these at 1/4, 299 at 1/2
        make_image(folder / "a" / f"{k}.jpg", seed=k, size=(1200, 900), quality=90)
    [alone] = extract(from_folder(folder), _config(tmp_path, cache="alone"))
    both = extract(from_folder(folder), _config(tmp_path, cache="both",
                                                backbones="squeezenet1_1,inception_v3"))
    together = next(r for r in both if r.backbone == "squeezenet1_1")
    a, b = read_features(alone.path), read_features(together.path)
    assert a.ids == b.ids and np.array_equal(a.X, b.X)
