"""Trunks rebuilt for analysis: weights, run folders, stages and their pooled outputs."""
import numpy as np
import pytest
import torch
from helpers import image_collection, tiny_run

from featbank.analysis.networks import (
    load_network,
    load_run,
    named_stages,
    pick_stage,
    sample_ids,
    stage_activations,
    weight_distance,
)
from featbank.models.registry import get_spec


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    cache = tmp_path_factory.mktemp("net") / "cache"
    collection = image_collection(cache)
    return cache, collection, tiny_run(cache, collection)


def test_stages_are_named_after_the_trunks_modules():
    squeeze = named_stages(load_network("squeezenet1_1", "random").trunk)
    assert [s.name for s in squeeze][:3] == ["features.0", "features.3", "features.4"]
    assert [s.index for s in squeeze] == list(range(1, 10))
    resnet = named_stages(get_spec("resnet18").build(False))
    assert [s.name for s in resnet] == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4"]


def test_pick_stage_by_number_name_or_last():
    stages = named_stages(get_spec("resnet18").build(False))
    assert pick_stage(stages, "last", "resnet18").name == "layer4"
    assert pick_stage(stages, "2", "resnet18").name == "layer1"
    assert pick_stage(stages, "layer3", "resnet18").index == 4
    assert pick_stage(stages, "bn1", "resnet18").index == 1  # a part of a joined name
    with pytest.raises(ValueError, match=r"unknown --stage 'layer9'; resnet18 has stages 1-5"):
        pick_stage(stages, "layer9", "resnet18")


def test_weight_distance_is_relative():
    trunk = load_network("squeezenet1_1", "random").trunk
    stage = named_stages(trunk)[0]
    assert weight_distance(stage, stage) == 0.0
    other = named_stages(load_network("squeezenet1_1", "random").trunk)[0]
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    assert weight_distance(stage, other) == pytest.approx(0.1, rel=1e-5)


def test_sample_ids_is_seeded_and_keeps_order():
    ids = [f"{k:03d}" for k in range(50)]
    a = sample_ids(ids, 10, seed=1)
    assert a == sample_ids(ids, 10, seed=1) and a == sorted(a) and len(set(a)) == 10
    assert a != sample_ids(ids, 10, seed=2)
    assert sample_ids(ids, 0, 0) == ids and sample_ids(ids, 80, 0) == ids


def test_stage_activations_last_is_the_trunk_output(art):
    _, collection, _ = art
    network = load_network("squeezenet1_1", "random")
    stages = network.stages
    ids = collection.ids[:5]
    kept, outputs = stage_activations(network, collection, ids, [stages[0], stages[-1]],
                                      device=torch.device("cpu"), batch_size=2)
    assert kept == ids
    assert outputs[0].shape == (5, 64) and outputs[1].shape == (5, 512)
    from featbank.data.images import decode_views, normalize

    views = torch.stack([decode_views(collection.path(i), [network.preprocess])[0][0] for i in ids])
    with torch.no_grad():
        direct = network.trunk(normalize(views, network.preprocess)).numpy()
    np.testing.assert_allclose(outputs[1], direct, rtol=1e-5, atol=1e-6)


def test_stage_activations_skip_images_that_do_not_decode(art, tmp_path):
    cache, collection, _ = art
    broken = collection.root / "icon" / "broken.png"
    broken.write_bytes(b"not an image")
    try:
        ids = ["icon/broken.png", *collection.ids[:3]]
        kept, [x] = stage_activations(load_network("squeezenet1_1", "random"), collection, ids,
                                      [load_network("squeezenet1_1", "random").stages[-1]],
                                      device=torch.device("cpu"))
        assert kept == collection.ids[:3] and x.shape == (3, 512)
    finally:
        broken.unlink()


def test_run_folder_gives_trunk_head_classes_and_split(art):
    _, _, run = art
    network = load_run(str(run))
    assert network.spec.name == "squeezenet1_1" and network.classes == ["icon", "vase"]
    assert network.task == "label" and network.split.min_per_class == 3
    assert network.preprocess.input_size == 48  # the run's own image size
    best = torch.load(run / "best.pt", weights_only=True)["model"]
    assert torch.equal(network.head.weight, best["head.weight"])
    same = load_network("squeezenet1_1", str(run))  # a run folder stands for its trunk.pth
    assert same.weights.id.startswith("sha256:") and same.label == run.name


def test_bad_sources_are_named(art, tmp_path):
    _, _, run = art
    with pytest.raises(FileNotFoundError, match="has no trunk.pth"):
        load_network("squeezenet1_1", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such weights file or run folder"):
        load_network("squeezenet1_1", str(tmp_path / "nope.pth"), option="--compare")
    with pytest.raises(ValueError, match="is a squeezenet1_1 trunk, not resnet18"):
        load_network("resnet18", str(run))
    (tmp_path / "trunk.pth").write_bytes((run / "trunk.pth").read_bytes())
    with pytest.raises(FileNotFoundError, match="has no best.pt"):
        load_run(str(tmp_path))
