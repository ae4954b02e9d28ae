"""The seeds' backbones with real ImageNet weights (../shared/weights): they load from their
files, refuse another architecture's in one line, and their features separate heritage's
classes far better than the same architecture with random weights."""
import logging

import numpy as np
import pytest
from helpers import HERITAGE, SHARED, needs_heritage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from featbank.analysis.networks import named_stages
from featbank.core.errors import BadInput
from featbank.data.collection import Collection, from_folder
from featbank.extraction.config import ExtractConfig
from featbank.extraction.engine import extract
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk
from featbank.store.features import read_features

XCEPTION = SHARED / "weights" / "xception-imagenet.pth"
LITE0 = SHARED / "weights" / "tf_efficientnet_lite0-imagenet.pth"


def test_a_full_model_s_classifier_is_dropped_and_said_so(caplog):
    with caplog.at_level(logging.WARNING, logger="featbank"):
        trunk = load_trunk(get_spec("timm:tf_efficientnet_lite0"), str(LITE0))
    assert "the classifier's 2 keys (classifier.bias, classifier.weight)" in caplog.text
    assert trunk.num_features == 1280


def test_another_architecture_s_file_is_one_line_with_examples():
    with pytest.raises(BadInput) as err:
        load_trunk(get_spec("xception"), str(LITE0))
    message = str(err.value)
    assert "does not fit xception: 264 missing keys (e.g. 'block1.rep.0.conv1.weight'), " \
           "286 unexpected keys (e.g. 'blocks.0.0.bn1.bias')" in message
    assert "\n" not in message


def test_xception_s_named_stages_are_its_flows():
    names = [s.name for s in named_stages(load_trunk(get_spec("xception"), str(XCEPTION)))]
    # entry flow: the two convolutions and blocks 1-3; middle flow: blocks 4-11;
    # exit flow: block 12 and the two separable convolutions
    assert names == ["conv1+bn1", "conv2+bn2", *(f"block{k}" for k in range(1, 13)),
                     "conv3+bn3", "conv4+bn4"]


def _sample(per_class: int = 24) -> Collection:
    full = from_folder(HERITAGE / "test", name="heritage")
    ids = [i for c in sorted(set(full.labels["label"]))
           for i in [j for j, y in zip(full.ids, full.labels["label"]) if y == c][:per_class]]
    labels = dict(zip(full.ids, full.labels["label"]))
    return Collection(name="heritage", root=full.root, ids=ids,
                      labels={"label": [labels[i] for i in ids]})


def _half_and_half(collection, backbone, weights, cache) -> float:
    config = ExtractConfig(backbones=backbone, weights=weights, cache_root=str(cache),
                           workers=1, batch_size=16, progress=False)
    [report] = extract(collection, config)
    data = read_features(report.path)
    label = dict(zip(collection.ids, collection.labels["label"]))
    y = np.array([label[i] for i in data.ids])
    a, b, ya, yb = train_test_split(data.X, y, test_size=0.5, stratify=y, random_state=0)
    return LogisticRegression(max_iter=2000).fit(a, ya).score(b, yb)


@pytest.mark.slow
@needs_heritage
@pytest.mark.parametrize("backbone,weights,margin", [
    # measured on these 240 images (24 a class), logistic regression trained on a random
    # half, scored on the other: xception 0.875 vs 0.100 random (chance: its random
    # features do not separate anything); lite0 0.908 vs 0.358 random
    ("xception", XCEPTION, 0.3), ("timm:tf_efficientnet_lite0", LITE0, 0.3)])
def test_real_weights_separate_heritage_far_better_than_random(tmp_path, backbone, weights,
                                                               margin):
    collection = _sample()
    trained = _half_and_half(collection, backbone, str(weights), tmp_path)
    random = _half_and_half(collection, backbone, "random", tmp_path)
    assert trained >= random + margin, (trained, random)
