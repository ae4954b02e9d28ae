"""A damaged cache is named and repaired: every readable row is kept, the rest extracted
again, and the final features equal an undamaged run's; featbank.verify finds the damage."""
import re
import shutil

import numpy as np
import pytest

from featbank.core.errors import DamagedFile
from featbank.data.collection import from_folder
from featbank.extraction.config import ExtractConfig
from featbank.extraction.engine import extract
from featbank.store.features import feature_files, read_features
from featbank.store.health import problems
from featbank.store.repair import repair
from featbank.store.shards import shard_files
from featbank.verify import main as verify
from helpers import make_image


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
