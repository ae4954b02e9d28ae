import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SQUEEZENET, needs_squeezenet

from featbank.models import registry as backbones
from featbank.models.registry import BACKBONES, get_spec, register, resolve_names, weights_id
from featbank.models.trunks import (
    TRUNK_FORMAT,
    WeightsUnavailableError,
    cached_checkpoint,
    export_trunk,
    load_state_dict_file,
    load_trunk,
    resolve_weights,
)


@pytest.mark.parametrize("name", sorted(BACKBONES) + ["timm:test_resnet"])
def test_every_backbone_gives_finite_gap_vectors(name):
    spec = get_spec(name)
    trunk = load_trunk(spec, "random")
    size = spec.preprocess.input_size
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        out = trunk(x)
    assert out.shape == (2, spec.feature_dim)
    assert torch.isfinite(out).all()
    assert not any(m.training for m in trunk.modules())
    assert not any(p.requires_grad for p in trunk.parameters())


def test_design_table_dimensions():
    dims = {n: BACKBONES[n].feature_dim for n in BACKBONES}
    assert dims == {"vgg19": 512, "resnet50": 2048, "inception_v3": 2048, "xception": 2048,
                    "alexnet": 256, "googlenet": 1024, "resnet18": 512, "squeezenet1_1": 512}
    assert BACKBONES["inception_v3"].preprocess.input_size == 299
    assert BACKBONES["xception"].preprocess.mean == (0.5, 0.5, 0.5)


def test_frozen_batchnorm_statistics_do_not_move():
    trunk = load_trunk(get_spec("resnet18"), "random")
    before = {k: v.clone() for k, v in trunk.state_dict().items() if "running" in k}
    with torch.inference_mode():
        trunk(torch.randn(4, 3, 64, 64) * 5 + 3)
    after = trunk.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_random_weights_are_reproducible():
    a = load_trunk(get_spec("squeezenet1_1"), "random").state_dict()
    b = load_trunk(get_spec("squeezenet1_1"), "random").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone 'nope'.*squeezenet1_1"):
        get_spec("nope")
    with pytest.raises(ValueError, match="unknown timm model"):
        get_spec("timm:not_a_model")
    with pytest.raises(ValueError, match="unknown backbone"):
        resolve_names("vgg19,nope")


def test_resolve_names_all_and_lists():
    assert resolve_names("all") == sorted(BACKBONES)
    assert resolve_names("vgg19, resnet50,vgg19") == ["vgg19", "resnet50"]


def test_registering_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register(BACKBONES["vgg19"])


@needs_squeezenet
def test_trunk_only_squeezenet_file_loads_strictly():
    spec = get_spec("squeezenet1_1")
    trunk = load_trunk(spec, str(SQUEEZENET))
    assert weights_id(str(SQUEEZENET)).startswith("sha256:6701bb3d0ded")
    with torch.inference_mode():
        out = trunk(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 512)


def test_state_dict_path_strict_on_trunk_keys(tmp_path):
    spec = get_spec("resnet18")
    full = backbones._torchvision_model("resnet18", False, {}, {}).state_dict()
    torch.save(full, tmp_path / "full.pth")  # with fc.* keys: allowed extras
    load_trunk(spec, str(tmp_path / "full.pth"))
    partial = {k: v for k, v in full.items() if not k.startswith("layer4")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not fit resnet18: 30 missing keys \\(e.g. "
                                         "'layer4.0.bn1.bias'\\); is it"):
        load_trunk(spec, str(tmp_path / "partial.pth"))
    torch.save({**full, "bogus.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="resnet18: 1 unexpected key \\(e.g. 'bogus.weight'\\); is it"):
        load_trunk(spec, str(tmp_path / "extra.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth is not a readable PyTorch state_dict"):
        load_trunk(spec, str(tmp_path / "junk.pth"))


def test_shape_mismatch_is_a_clear_error(tmp_path):
    vgg = load_trunk(get_spec("alexnet"), "random").state_dict()
    torch.save(vgg, tmp_path / "alexnet.pth")
    with pytest.raises(ValueError, match="does not fit"):
        load_state_dict_file(load_trunk(get_spec("squeezenet1_1"), "random"),
                             tmp_path / "alexnet.pth")


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        weights_id("/nonexistent/weights.pth")


def test_imagenet_is_pinned_to_exact_published_weights():
    pins = {n: s.imagenet.exact for n, s in BACKBONES.items()}
    assert pins["resnet50"] == "torchvision:resnet50.IMAGENET1K_V2"
    assert pins["squeezenet1_1"] == "torchvision:squeezenet1_1.IMAGENET1K_V1"
    assert pins["xception"] == "timm:legacy_xception.tf_in1k"
    w = resolve_weights(get_spec("squeezenet1_1"), "imagenet")  # offline: nothing downloaded
    assert (w.id, w.exact, w.published_hash) == \
        ("imagenet", "torchvision:squeezenet1_1.IMAGENET1K_V1", "sha256:b8a52dc0")
    assert resolve_weights(get_spec("vgg19"), "random").exact == "random:library-init:seed0"


def test_registry_and_parsers_import_without_torch():
    code = ("import sys, featbank.models.registry, featbank.data.collection, featbank.store.features, featbank.cli.common, "
            "featbank.core.settings, featbank.heads.registry; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _offline(monkeypatch):
    import urllib.error

    def refuse(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_offline_imagenet_names_the_file_and_alternatives(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _offline(monkeypatch)
    with pytest.raises(WeightsUnavailableError,
                       match=r"squeezenet1_1-b8a52dc0\.pth.*--init PATH.*--init random"):
        load_trunk(get_spec("squeezenet1_1"), "imagenet", option="--init")
    captured = capsys.readouterr()
    assert "Downloading" not in captured.out + captured.err
    assert not list(tmp_path.rglob("*.pth*"))  # no partial download left behind


def _pin(monkeypatch, content: bytes, tmp_path) -> Path:
    """Pretend torchvision publishes ``content``: its URL carries that file's sha256 prefix
    (no real torchvision file is on these machines), and torch's cache holds it."""
    import hashlib

    import featbank.models.trunks as trunks

    prefix = hashlib.sha256(content).hexdigest()[:8]
    url = f"https://download.pytorch.org/models/squeezenet1_1-{prefix}.pth"
    monkeypatch.setattr(trunks, "_checkpoint_url", lambda spec: url)
    target = cached_checkpoint(url)
    assert target == tmp_path / "hub" / "checkpoints" / f"squeezenet1_1-{prefix}.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    return target


@needs_squeezenet
def test_cached_imagenet_file_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _offline(monkeypatch)
    spec = get_spec("squeezenet1_1")
    _pin(monkeypatch, SQUEEZENET.read_bytes(), tmp_path)  # trunk-only: no classifier keys
    trunk = load_trunk(spec, "imagenet")
    expected = load_trunk(spec, str(SQUEEZENET))
    assert all(torch.equal(a, b) for a, b in zip(trunk.state_dict().values(),
                                                   expected.state_dict().values()))


@needs_squeezenet
def test_truncated_cached_file_is_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _offline(monkeypatch)
    # a file the real download's hash would not match is refused by that hash first
    wrong = tmp_path / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(SQUEEZENET.read_bytes()[:100_000])
    with pytest.raises(ValueError, match=r"squeezenet1_1-b8a52dc0\.pth has the name of .*"
                                         r"it is another file\. Delete it"):
        load_trunk(get_spec("squeezenet1_1"), "imagenet")
    # one whose hash matches but that does not load is named too
    target = _pin(monkeypatch, SQUEEZENET.read_bytes()[:100_000], tmp_path)
    with pytest.raises(ValueError, match=rf"{target.name} is not a readable.*"
                                         r"weights cache: delete it"):
        load_trunk(get_spec("squeezenet1_1"), "imagenet")
    import io
    buffer = io.BytesIO()
    torch.save({"features.0.weight": torch.zeros(1)}, buffer)  # keys missing
    target = _pin(monkeypatch, buffer.getvalue(), tmp_path)
    with pytest.raises(ValueError, match=rf"{target.name} does not fit squeezenet1_1"):
        load_trunk(get_spec("squeezenet1_1"), "imagenet")


def test_exported_trunk_describes_itself_and_loads(tmp_path):
    spec = get_spec("squeezenet1_1")
    trunk = load_trunk(spec, "random")
    export_trunk(trunk, tmp_path / "trunk.pth", backbone=spec.name, classes=["a", "b"])
    saved = torch.load(tmp_path / "trunk.pth", weights_only=True)
    assert saved["format"] == TRUNK_FORMAT and saved["classes"] == ["a", "b"]
    again = load_trunk(spec, str(tmp_path / "trunk.pth"))
    assert all(torch.equal(a, b) for a, b in zip(trunk.state_dict().values(),
                                                   again.state_dict().values()))
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="is a squeezenet1_1 trunk, not alexnet"):
        load_trunk(get_spec("alexnet"), str(tmp_path / "trunk.pth"))


def test_feature_selections_parse_without_torch():
    from featbank.models.registry import parse_selection

    assert parse_selection("all") == []
    assert parse_selection("vgg19@imagenet+resnet50@6701BB3D, alexnet") == [
        (("vgg19", "imagenet"), ("resnet50", "sha256:6701bb3d")), (("alexnet", None),)]
    assert parse_selection("resnet50@sha256:abcd") == [(("resnet50", "sha256:abcd"),)]
    for bad, message in [("vgg19@", "sha256 prefix"), ("nope+vgg19", "unknown backbone"),
                         ("vgg19+vgg19", "twice"), ("", "no backbone")]:
        with pytest.raises(ValueError, match=message):
            parse_selection(bad)
