"""Every head is a scikit-learn estimator by scikit-learn's own checks (clone, pickling,
input validation, class weights, invariances), and fits without validation data on
small, imbalanced data."""
import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

import featbank as fb
from featbank.heads.registry import HEADS, HeadOptions

torch.set_num_threads(1)  # hundreds of tiny fits: threads only cost here


@parametrize_with_checks([HEADS[name].factory(HeadOptions()) for name in HEADS])
def test_every_head_passes_scikit_learn_s_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("head", list(HEADS))
def test_fit_head_without_validation_data_on_small_imbalanced_data(head):
    rng = np.random.default_rng(0)
    sizes = [30, 12, 6, 3, 2, 2, 1, 1, 1, 2]  # 60 images of 10 classes, some of one image
    y = np.concatenate([[f"c{k}"] * n for k, n in enumerate(sizes)])
    centres = rng.normal(scale=4.0, size=(10, 16))
    X = (centres[[int(c[1:]) for c in y]] + rng.normal(size=(60, 16))).astype(np.float32)
    pipeline = fb.fit_head(head, X, y)
    assert set(pipeline.classes_) == set(y)
    assert np.mean(pipeline.predict(X) == y) > 0.6
