"""A head ``classify.py`` stored, found for an analysis and turned into torch layers.

:func:`stored_head` finds the head of a task, backbone, weights and head name in
the results store and loads it only while it is current: trained on the feature
file's content as it is now and the task's split as it is now (the identity
rule of :mod:`featbank.evaluation.currency`). :func:`head_to_torch` reads a linear
head off its pipeline exactly; :class:`Classifier` puts it on a trunk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featbank.analysis.config import SaliencyConfig
from featbank.analysis.networks import trunk_source
from featbank.core.errors import BadInput, MissingFile
from featbank.data.collection import Collection
from featbank.evaluation.currency import Currency
from featbank.heads.registry import decision_scores
from featbank.store.results import latest_rows, load_results, stored_path


class Classifier(nn.Module):
    """trunk -> GAP vector -> head -> logits."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class L2Normalize(nn.Module):
    """scikit-learn's ``Normalizer()`` (unit L2 norm per row) as a torch layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)


def head_to_torch(pipeline) -> nn.Module:
    """A stored linear head (``Pipeline([normalize, pca, head])``) as torch layers.

    Everything after an L2 normalisation is affine (standardisation, PCA, a
    linear head), so it is read off the pipeline exactly: its scores at 0 give
    the bias, at each unit vector a column of the weight. The map is checked
    on random inputs; a head that is not linear is refused.
    """
    from sklearn.preprocessing import Normalizer

    first = pipeline.steps[0][1]
    normalise = isinstance(first, Normalizer)
    rest = pipeline[1:] if normalise else pipeline
    if not hasattr(rest, "decision_function"):
        raise BadInput(f"the stored {type(pipeline[-1]).__name__} head has no linear scores")
    d = next(step.n_features_in_ for _, step in pipeline.steps
             if step not in (None, "passthrough"))
    scores = _scores(rest, np.vstack([np.zeros(d), np.eye(d)]))
    bias, weight = scores[0], (scores[1:] - scores[0]).T
    probe = np.random.default_rng(0).normal(size=(16, d))
    if normalise:
        probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    expected = _scores(rest, probe)
    if not np.allclose(probe @ weight.T + bias, expected, rtol=1e-3,
                       atol=1e-3 * max(1.0, np.abs(expected).max())):
        raise BadInput(f"the stored {type(pipeline[-1]).__name__} head is not linear")
    linear = nn.Linear(d, weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    return nn.Sequential(L2Normalize(), linear) if normalise else linear


def _scores(pipeline, X: np.ndarray) -> np.ndarray:
    return np.asarray(decision_scores(pipeline, X.astype(np.float32)), dtype=np.float64)


def stored_head(collection: Collection, config: SaliencyConfig):
    """The head ``classify.py`` stored for this task, backbone, weights and head name
    (found before any trunk is built or downloaded)."""
    import joblib

    from featbank.models.registry import get_spec
    from featbank.models.trunks import resolve_weights

    weights = resolve_weights(get_spec(config.backbone), trunk_source(config.weights)).id
    folder = Path(config.cache_root) / collection.name
    rows = [r for r in latest_rows(load_results(folder))
            if r.get("method") == "off-the-shelf" and r.get("head") == config.head
            and r.get("task") == config.task and r.get("backbone") == config.backbone
            and r.get("weights") == weights and r.get("head_path")
            and (r.get("layer") or "final") == "final"]
    again = (f"run classify.py --head {config.head} --backbone {config.backbone} --task "
             f"{config.task}")
    if not rows:
        raise MissingFile(f"no stored {config.head} head for task {config.task!r} on "
                          f"{config.backbone} ({weights[:19]}); {again} first")
    stale = Currency(folder).reason(rows[-1])
    if stale:
        raise BadInput(f"the stored {config.head} head for task {config.task!r} on "
                       f"{config.backbone} is not current ({stale}); {again}")
    path = stored_path(folder, rows[-1]["head_path"])
    if not path.is_file():
        raise MissingFile(f"stored head {path} is gone; run classify.py --force again")
    return joblib.load(path)
