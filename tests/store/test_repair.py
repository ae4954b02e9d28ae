"""A damaged cache is named and repaired: every readable row is kept, the rest extracted
again, and the final features equal an undamaged run's; verify.py finds the damage."""
import re
import shutil

import numpy as np
import pytest
from helpers import make_image

from featbank.cli.verify import main as verify
from featbank.core.errors import DamagedFile
from featbank.data.collection import from_folder
from featbank.extraction.config import ExtractConfig
from featbank.extraction.engine import extract
from featbank.store.features import feature_files, read_features
from featbank.store.health import problems
from featbank.store.repair import repair
from featbank.store.shards import shard_files


def _grow(root, cache, classes):
    """Extract the collection once per step, each step adding a class: a file with shards."""
    for cls in classes:
        for k in range(4):
            make_image(root / cls / f"{k}.jpg", seed=100 * len(cls) + 7 * k + ord(cls[0]),
                       size=(40, 40), quality=90)
        config = ExtractConfig(backbones="squeezenet1_1", weights="random",
                               cache_root=str(cache), workers=0, batch_size=4, progress=False)
        [report] = extract(from_folder(root), config)
    return report.path


@pytest.fixture
def caches(tmp_path):
    """An undamaged cache, and a copy of it to damage."""
    path = _grow(tmp_path / "art", tmp_path / "whole", ["a", "bb", "ccc"])
    shutil.copytree(tmp_path / "whole", tmp_path / "damaged")
    return path, tmp_path / "damaged" / path.relative_to(tmp_path / "whole")


def _shards(path):
    return shard_files(path.with_name(path.name + ".shards"))


DAMAGE = {
    "truncated shard": lambda p: _shards(p)[1].write_bytes(_shards(p)[1].read_bytes()[:3000]),
    "missing shard": lambda p: _shards(p)[0].unlink(),
    "truncated main file": lambda p: p.write_bytes(p.read_bytes()[:1500]),
    "zero-byte main file": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_named_then_repaired_to_the_undamaged_features(kind, caches, capsys):
    whole, damaged = caches
    DAMAGE[kind](damaged)
    assert problems(damaged) and not problems(whole)
    with pytest.raises(DamagedFile, match=f"{damaged.name} .*run extract.py again"):
        read_features(damaged)
    with pytest.raises(DamagedFile, match=damaged.name):
        feature_files(damaged.parent.parent)
    with pytest.raises(SystemExit) as exit:
        verify([str(damaged.parents[2])])
    assert exit.value.code == 1 and damaged.name in capsys.readouterr().out
    # extract.py names the damage, keeps what it can read, and extracts the rest again
    root = damaged.parents[3] / "art"
    config = ExtractConfig(backbones="squeezenet1_1", weights="random",
                           cache_root=str(damaged.parents[2]), workers=0, batch_size=4,
                           progress=False)
    [report] = extract(from_folder(root), config)
    assert "repaired" in capsys.readouterr().err
    ours, theirs = read_features(report.path), read_features(whole)
    order = [ours.ids.index(i) for i in theirs.ids]
    assert sorted(ours.ids) == sorted(theirs.ids)
    np.testing.assert_allclose(ours.X[order], theirs.X, rtol=1e-5, atol=1e-6)
    verify([str(damaged.parents[2])])  # whole again: no SystemExit
    if kind != "missing shard":  # the unusable pieces are kept, never deleted
        assert list((damaged.parent / "damaged").iterdir())


def test_repair_keeps_the_readable_shards_rows(caches):
    _, damaged = caches
    DAMAGE["truncated shard"](damaged)
    done = repair(damaged)
    assert done.kept == 8 and done.dropped == 4  # 3 shards of 4 rows; the middle one lost
    assert re.search("its shard 000001-[0-9a-f]{8}.h5 cannot be opened", str(done))
    assert not problems(damaged) and len(read_features(damaged).ids) == 8
    assert repair(damaged) is None  # whole: nothing to do


# -- every kind of damage, at every position -------------------------------------------------

def _config(cache):
    return ExtractConfig(backbones="squeezenet1_1", weights="random", cache_root=str(cache),
                         workers=0, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A file of four shards (four runs), and a fifth run killed after its last part was
    written: two parts wait beside the file. Returns (folder, images root, file)."""
    import featbank.store.writer as writer

    top = tmp_path_factory.mktemp("grown")
    path = _grow(top / "art", top / "cache", ["a", "bb", "ccc", "dddd"])
    for k in range(8):
        make_image(top / "art" / "eeeee" / f"{k}.jpg", seed=900 + k, size=(40, 40), quality=90)
    real = writer.FeatureWriter.merge
    calls = []

    def killed(self):
        calls.append(1)
        if len(calls) == 2:  # the merge at the end of the run: the kill comes first
            raise KeyboardInterrupt
        return real(self)
    writer.FeatureWriter.merge = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            extract(from_folder(top / "art"), _config(top / "cache"))
    finally:
        writer.FeatureWriter.merge = real
    assert len(list(path.with_name(path.name + ".parts").glob("*.npz"))) == 2
    return top, path


def _layout(path):
    import h5py

    with h5py.File(path, "r") as f:
        return path.with_name(path.name + ".shards") / str(f.attrs["layout"])


def _parts(path):
    return sorted(path.with_name(path.name + ".parts").glob("*.npz"))


def _truncate(piece, keep=0.4):
    piece.write_bytes(piece.read_bytes()[:int(piece.stat().st_size * keep)])


MAIN_DAMAGE = {
    "truncated main file": lambda p: _truncate(p),
    "zero-byte main file": lambda p: p.write_bytes(b""),
    "missing layout": lambda p: _layout(p).unlink(),
    "truncated layout": lambda p: _truncate(_layout(p)),
}
PIECE_DAMAGE = {
    "missing shard": (lambda p, k: shard_files(p.with_name(p.name + ".shards"))[k].unlink(), 4),
    "truncated shard": (lambda p, k: _truncate(shard_files(p.with_name(p.name + ".shards"))[k]),
                        4),
    "missing part": (lambda p, k: _parts(p)[k].unlink(), 2),
    "truncated part": (lambda p, k: _truncate(_parts(p)[k]), 2),
}
CASES = [(kind, None) for kind in MAIN_DAMAGE] + \
    [(kind, k) for kind, (_, n) in PIECE_DAMAGE.items() for k in range(n)]


@pytest.mark.parametrize("repairer", ["extract", "verify"])
@pytest.mark.parametrize("kind,position", CASES)
def test_every_damage_at_every_position_ends_in_every_row_of_a_fresh_extraction(
        grown, tmp_path, kind, position, repairer, capsys):
    top, whole = grown
    shutil.copytree(top / "cache", tmp_path / "cache")
    damaged = tmp_path / "cache" / whole.relative_to(top / "cache")
    if position is None:
        MAIN_DAMAGE[kind](damaged)
    else:
        PIECE_DAMAGE[kind][0](damaged, position)
    assert problems(damaged) or kind == "missing part"
    if repairer == "verify":
        try:
            verify(["--repair", str(tmp_path / "cache")])
        except SystemExit:
            pytest.fail("verify --repair left damage")
    [report] = extract(from_folder(top / "art"), _config(tmp_path / "cache"))
    [fresh] = extract(from_folder(top / "art"), _config(tmp_path / "fresh"))
    ours, theirs = read_features(report.path), read_features(fresh.path)
    assert sorted(ours.ids) == sorted(theirs.ids) and len(ours.ids) == 24
    row = {i: k for k, i in enumerate(ours.ids)}
    np.testing.assert_allclose(ours.X[[row[i] for i in theirs.ids]], theirs.X,
                               rtol=1e-5, atol=1e-6)
    assert not problems(report.path)


@pytest.mark.parametrize("kind", list(MAIN_DAMAGE))
def test_a_damaged_main_file_is_rebuilt_from_its_shards_without_extracting(grown, tmp_path,
                                                                            kind, capsys):
    """The shards hold their own ids: 0 rows extracted again, the rows bitwise those of
    the undamaged file."""
    import featbank.extraction.loader as loader

    top, whole = grown
    shutil.copytree(top / "cache", tmp_path / "cache")
    damaged = tmp_path / "cache" / whole.relative_to(top / "cache")
    shutil.rmtree(damaged.with_name(damaged.name + ".parts"))  # only the damage below
    before = read_features(whole)
    MAIN_DAMAGE[kind](damaged)
    done = repair(damaged)
    assert done.rebuilt and done.kept == 16 and done.dropped == 0
    assert "rebuilt from its shards" in str(done)
    read = []
    real = loader.read_stamped
    loader.read_stamped = lambda p: read.append(p) or real(p)
    try:
        [report] = extract(from_folder(top / "art"), _config(tmp_path / "cache"))
    finally:
        loader.read_stamped = real
    after = read_features(report.path)
    assert len(read) == 8  # the killed run's eight images only; the 16 stored rows stayed
    row = {i: k for k, i in enumerate(after.ids)}
    assert np.array_equal(after.X[[row[i] for i in before.ids]], before.X)


def test_verify_repair_waits_for_the_run_that_holds_the_file_s_lock(caches, capsys):
    """A run writing the file holds its extraction lock; ``verify --repair`` waits for it
    instead of rebuilding the file under it."""
    import subprocess
    import sys
    import time

    from featbank.store.writer import lock_of

    _, damaged = caches
    DAMAGE["truncated main file"](damaged)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; "
         "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); "
         "time.sleep(3)", str(lock_of(damaged))], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    verify(["--repair", str(damaged.parents[2])])
    waited = time.monotonic() - start
    holder.wait()
    assert f"waiting for the run that is writing {damaged}" in capsys.readouterr().out
    assert waited > 1.0 and not problems(damaged)
