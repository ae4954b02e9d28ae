import json

import pytest

from featbank.core.fileio import atomic_path, atomic_write_json, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_json_round_trip(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"weights": "sha256:ab", "mean": [0.5]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"weights": "sha256:ab", "mean": [0.5]}
