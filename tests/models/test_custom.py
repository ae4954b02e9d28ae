"""Bring your own network: any nn.Module mapping images to maps or vectors is extracted,
cached by the digest of its state_dict and its class name, and a re-run is a no-op."""

import numpy as np
import pytest
import torch
from torch import nn

import featbank as fb
from featbank.models.custom import module_digest


class TinyNet(nn.Module):
    def __init__(self, seed: int = 0, maps: bool = True):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.maps = maps

    def forward(self, x):
        out = torch.relu(self.conv(x))
        return out if self.maps else out.mean(dim=(2, 3))


def test_a_module_is_cached_by_its_weights_and_a_rerun_is_a_no_op(tmp_path, image_folder):
    [report] = fb.extract(
        image_folder,
        backbone=TinyNet(),
        cache=tmp_path / "cache",
        workers=0,
        progress=False,
        preprocess={"input_size": 32},
    )
    assert report.n_rows == 12 and report.n_added == 12
    assert report.path.name.startswith("module-TinyNet__sha256-")
    data = fb.load_features("module:TinyNet", collection="images", cache=tmp_path / "cache")
    assert data.X.shape == (12, 8) and np.isfinite(data.X).all()
    assert data.provenance["weights_exact"] == f"module:TinyNet:{module_digest(TinyNet())}"
    [again] = fb.extract(
        image_folder,
        backbone=TinyNet(),
        cache=tmp_path / "cache",
        workers=0,
        progress=False,
        preprocess={"input_size": 32},
    )
    assert again.n_added == 0 and again.n_new == 0 and again.path == report.path
    [other] = fb.extract(
        image_folder,
        backbone=TinyNet(seed=1),
        cache=tmp_path / "cache",
        workers=0,
        progress=False,
        preprocess={"input_size": 32},
    )
    assert other.path != report.path and other.n_added == 12  # other weights, another file


def test_vectors_are_taken_as_they_are_and_bad_modules_are_refused(tmp_path, image_folder):
    [report] = fb.extract(
        image_folder,
        backbone=TinyNet(maps=False),
        cache=tmp_path / "cache",
        workers=0,
        progress=False,
        preprocess={"input_size": 32},
    )
    assert fb.load_features(
        "module:TinyNet", collection="images", cache=tmp_path / "cache"
    ).X.shape == (12, 8)
    with pytest.raises(ValueError, match="does not take a"):
        fb.extract(
            image_folder,
            backbone=nn.Linear(3, 4),
            cache=tmp_path / "cache",
            workers=0,
            progress=False,
        )
    with pytest.raises(ValueError, match="preprocess is for a network passed as a module"):
        fb.extract(
            image_folder,
            backbone="squeezenet1_1",
            preprocess={"input_size": 32},
            cache=tmp_path / "cache",
        )
