"""Weights are what their bytes say: a file is recorded by its own sha256, and a file placed
under a published checkpoint's name is checked against the hash that name promises."""
import shutil

import pytest
from helpers import SQUEEZENET

from featbank.core.errors import BadInput
from featbank.core.hashing import file_sha256, hash_memo
from featbank.models.registry import get_spec, weights_id
from featbank.models.trunks import resolve_weights

SQUEEZENET_SHA256 = "6701bb3d0ded9d21616f62471566e98b296ea5a9ff1960815c441c5c33e5dbaf"


def test_a_file_is_recorded_by_its_own_hash_remembered_by_path_size_and_mtime(tmp_path):
    copy = tmp_path / "renamed.pth"
    shutil.copy(SQUEEZENET, copy)
    assert weights_id(str(SQUEEZENET)) == weights_id(str(copy)) == f"sha256:{SQUEEZENET_SHA256}"
    assert f"{copy.resolve()}|" in hash_memo().read_text()  # remembered
    with open(copy, "ab") as fh:  # a changed file is hashed again
        fh.write(b"\0")
    assert file_sha256(copy) != SQUEEZENET_SHA256


def test_a_copy_under_the_pinned_name_is_refused_not_labelled_imagenet(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    pinned = tmp_path / "torch/hub/checkpoints/squeezenet1_1-b8a52dc0.pth"
    pinned.parent.mkdir(parents=True)
    shutil.copy(SQUEEZENET, pinned)  # the old README's offline recipe
    with pytest.raises(BadInput) as err:
        resolve_weights(get_spec("squeezenet1_1"), "imagenet")
    message = str(err.value)
    assert "torchvision:squeezenet1_1.IMAGENET1K_V1 (sha256 b8a52dc0...)" in message
    assert "its sha256 is 6701bb3d0ded..." in message and f"--weights {pinned}" in message
    assert "\n" not in message
    # used as what it is, it is the file's own weights
    own = resolve_weights(get_spec("squeezenet1_1"), str(pinned))
    assert own.id == own.exact == f"sha256:{SQUEEZENET_SHA256}"
