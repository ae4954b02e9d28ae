"""analyze.py layers: per-stage weight distance and CKA between two trunks."""
import json

import pytest
import torch
from helpers import image_collection

from featbank.analysis.config import LayersConfig
from featbank.analysis.layers import layers
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    cache = tmp_path_factory.mktemp("layers") / "cache"
    return cache, image_collection(cache, per_class=6, size=(64, 64))


def _config(cache, **kw):
    settings = dict(backbone="squeezenet1_1", weights="random", compare="random", n=12,
                    workers=0, device="cpu", cache_root=str(cache), progress=False)
    settings.update(kw)
    return LayersConfig(**settings)


def test_a_trunk_against_itself(art):
    cache, collection = art
    report = layers(collection, _config(cache))
    assert [s["name"] for s in report["stages"]][0] == "features.0"
    assert len(report["stages"]) == 9 and report["n_images"] == 12
    for stage in report["stages"]:
        assert stage["weight_distance"] == pytest.approx(0, abs=1e-6)
        assert stage["cka"] == pytest.approx(1, abs=1e-3)
    assert json.loads(open(report["json"]).read())["stages"] == report["stages"]
    assert open(report["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_changed_copy_moves_from_its_changed_stage_on(art, tmp_path):
    cache, collection = art
    trunk = load_trunk(get_spec("squeezenet1_1"), "random")
    state = trunk.state_dict()
    generator = torch.Generator().manual_seed(0)
    for key in [k for k in state if k.startswith("features.12.")]:  # the last Fire module only
        state[key] = state[key] + 0.5 * state[key].std() * torch.randn(state[key].shape,
                                                                      generator=generator)
    torch.save(state, tmp_path / "changed.pth")
    report = layers(collection, _config(cache, compare=str(tmp_path / "changed.pth")))
    *before, last = report["stages"]
    assert all(s["weight_distance"] == 0 and s["cka"] == pytest.approx(1, abs=1e-3)
               for s in before)
    assert last["weight_distance"] > 0.1 and 0 <= last["cka"] < 0.999
    assert report["compare"].startswith("sha256:") and report["compare_label"] == "changed.pth"


def test_another_architecture_is_refused(art, tmp_path):
    cache, collection = art
    torch.save(load_trunk(get_spec("resnet18"), "random").state_dict(), tmp_path / "r.pth")
    with pytest.raises(ValueError, match="does not fit squeezenet1_1"):
        layers(collection, _config(cache, compare=str(tmp_path / "r.pth")))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="--n must be at least 4"):
        LayersConfig(backbone="squeezenet1_1", weights="random", compare="random", n=2)
    with pytest.raises(ValueError, match="name the trunk's weights"):
        LayersConfig(backbone="squeezenet1_1", weights="all", compare="random")
    with pytest.raises(ValueError, match="takes one backbone"):
        LayersConfig(backbone="resnet18,alexnet", weights="random", compare="random")
