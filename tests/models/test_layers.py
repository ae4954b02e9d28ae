"""The layers of a trunk (models.layers): named in forward order, tapped in one pass, pooled
as recorded."""
import pytest
import torch

from featbank.core.errors import BadInput
from featbank.models.layers import (
    FINAL,
    Taps,
    final_output,
    layer_dims,
    layers,
    pick,
    pooling,
    resolve_pool,
)
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk


def _trunk(name):
    return load_trunk(get_spec(name), "random", progress=False)


def test_a_cnn_lists_its_stages_in_forward_order_then_final():
    names = [layer.name for layer in layers(_trunk("resnet18"))]
    assert names == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4", FINAL]
    assert [layer.index for layer in layers(_trunk("resnet18"))] == [1, 2, 3, 4, 5, 6]


def test_a_trunk_with_its_blocks_in_one_container_is_opened_into_them():
    names = [layer.name for layer in layers(_trunk("timm:vit_tiny_patch16_224"))]
    assert names[:3] == ["patch_embed", "blocks.0", "blocks.1"]
    assert names[-2:] == ["blocks.11", FINAL] and len(names) == 14


def test_pick_takes_names_numbers_and_all_and_refuses_the_unknown_naming_the_known():
    trunk = _trunk("resnet18")
    assert [l.name for l in pick(trunk, "final,layer2,1")] == ["conv1+bn1", "layer2", FINAL]
    assert [l.name for l in pick(trunk, "bn1")] == ["conv1+bn1"]  # a part of a group's name
    assert len(pick(trunk, "all")) == 6
    with pytest.raises(BadInput, match="'layer9': no such layer in resnet18, which has "
                                       "conv1\\+bn1, layer1"):
        pick(trunk, "layer9", "resnet18")


def test_taps_give_the_global_average_of_each_stage_from_the_same_pass():
    trunk = _trunk("resnet18")
    chosen = pick(trunk, "layer1,layer3,final")
    x = torch.randn(2, 3, 64, 64)
    taps = Taps(trunk, chosen, {"layer1": "gap", "layer3": "gap"})
    with torch.inference_mode():
        out = trunk(x)
        taps.remove()
        h = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
        l1 = trunk.layer1(h)
        l3 = trunk.layer3(trunk.layer2(l1))
    assert torch.allclose(taps.out["layer1"], l1.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(taps.out["layer3"], l3.mean(dim=(2, 3)), atol=1e-6)
    assert out.shape == (2, 512)
    trunk(x)  # removed hooks keep nothing more
    assert set(taps.out) == {"layer1", "layer3"}


def test_layer_dims_measure_each_layers_vector():
    trunk = _trunk("resnet18")
    chosen = pick(trunk, "all")
    dims = layer_dims(trunk, chosen, 64, {l.name: "gap" for l in chosen})
    assert dims == {"conv1+bn1": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512,
                    FINAL: 512}


def test_token_pools_are_resolved_per_layer_and_cls_is_the_class_token():
    trunk = _trunk("timm:vit_tiny_patch16_224")
    every = layers(trunk)
    auto = {l.name: resolve_pool(trunk, l, "auto", "vit") for l in every}
    assert auto["patch_embed"] == "mean"  # the class token is added after it
    assert auto["blocks.3"] == "cls" and auto[FINAL] == "model"
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        tokens = trunk.forward_features(x)
        assert torch.allclose(final_output(trunk, x, "cls"), tokens[:, 0], atol=1e-6)
        assert torch.allclose(final_output(trunk, x, "mean"), tokens[:, 1:].mean(1), atol=1e-6)
        assert torch.allclose(final_output(trunk, x, "gap"), tokens.mean(1), atol=1e-6)
        # vit's own pooling is its class token: the same vector
        assert torch.allclose(final_output(trunk, x, "model"), tokens[:, 0], atol=1e-5)


def test_a_cnn_refuses_token_pools_in_one_line():
    trunk = _trunk("resnet18")
    with pytest.raises(BadInput, match="--pool cls is for token networks .*resnet18 gives "
                                       "feature maps"):
        resolve_pool(trunk, layers(trunk)[0], "cls", "resnet18")
    assert resolve_pool(trunk, layers(trunk)[0], "auto", "resnet18") == "gap"
    assert resolve_pool(trunk, layers(trunk)[-1], "gap", "resnet18") == "model"


def test_pooling_of_each_shape():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(pooling(maps, "gap"), maps.mean(dim=(2, 3)))
    tokens = torch.randn(2, 5, 4)
    assert torch.equal(pooling(tokens, "cls"), tokens[:, 0])
    assert torch.allclose(pooling(tokens, "mean", prefix_tokens=1), tokens[:, 1:].mean(1))
    assert torch.allclose(pooling(tokens, "gap"), tokens.mean(1))
    with pytest.raises(BadInput, match="cannot pool"):
        pooling(torch.randn(2, 3, 4, 5, 6), "gap")
