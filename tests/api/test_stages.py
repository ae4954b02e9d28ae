"""The public API: cheap to import, the same stages as the command lines, plain objects out."""
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, write_toy_cache

import featbank as fb


def test_import_featbank_and_its_functions_cost_no_torch():
    code = ("import sys, featbank as fb; fb.load_features; fb.results_table; fb.retrieve; "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_is_a_documented_function():
    for name in fb.__all__:
        if name != "__version__":
            function = getattr(fb, name)
            assert callable(function) and "Parameters" in function.__doc__, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fb.nothing


def test_load_features_aligns_labels_with_rows(tmp_path):
    write_toy_cache(tmp_path / "cache")
    data = fb.load_features("resnet18", cache=tmp_path / "cache")
    assert data.X.shape == (60, 32) and data.X.dtype == np.float32
    assert set(data.labels) == {"style", "single", "tiny"}
    assert [i.split("/")[0] for i in data.ids] == data.labels["style"]
    assert data.provenance["backbone"] == "resnet18"
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        fb.load_features("nope", cache=tmp_path / "cache")


def test_fit_head_tunes_and_returns_a_fitted_pipeline(tmp_path):
    write_toy_cache(tmp_path / "cache")
    data = fb.load_features("alexnet", cache=tmp_path / "cache")
    y = np.array(data.labels["style"])
    train, val = np.arange(0, 60, 2), np.arange(1, 60, 2)
    head = fb.fit_head("logreg", data.X[train], y[train], X_val=data.X[val], y_val=y[val])
    assert head.score(data.X[val], y[val]) > 0.9
    assert head[-1].get_params()["C"] in (1.0, 0.1, 0.01, 0.001)
    with pytest.raises(ValueError, match="unknown head 'tree'"):
        fb.fit_head("tree", data.X, y)
