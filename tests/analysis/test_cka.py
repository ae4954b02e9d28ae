"""CKA between feature files: on the ids they share, 1 on the diagonal, a heatmap beside."""
import json

import numpy as np
import pytest
from helpers import write_toy_cache

from featbank.analysis.config import CkaConfig
from featbank.analysis.similarity import linear_cka
from featbank.store.features import read_features
from featbank.store.provenance import feature_path
from featbank.store.writer import FeatureWriter


def test_cka_of_files_on_shared_ids(tmp_path):
    from featbank.analysis.cka import cka

    cache = tmp_path / "cache"
    folder = write_toy_cache(cache)
    a, b = sorted((folder / "features").glob("*.h5"))
    # a third file holding half the ids, in another order: compared on those only
    data = read_features(b)
    keep = list(range(0, 60, 2))[::-1]
    attrs = {**data.provenance, "backbone": "vgg19"}
    part = FeatureWriter(feature_path(cache, "toy", "vgg19", "random"), attrs)
    part.add_batch([data.ids[k] for k in keep], data.X[keep])
    part.merge()
    messages = []
    report = cka(CkaConfig(features=[str(a), str(a), str(b), str(part.path)],
                           cache_root=str(cache), progress=False), warn=messages.append)
    m = np.array(report["cka"])
    assert m.shape == (4, 4) and np.allclose(np.diag(m), 1, atol=1e-4) and np.allclose(m, m.T)
    assert m[0, 1] == pytest.approx(1, abs=1e-4)
    assert report["n_shared_ids"] == 30 and any("not in every file" in x for x in messages)
    # the same vectors in another row order: aligned by id, so CKA with b's rows is 1
    assert m[2, 3] == pytest.approx(1, abs=1e-4)
    fa = read_features(a)
    rows = [fa.ids.index(data.ids[k]) for k in sorted(keep)]
    assert m[0, 2] == pytest.approx(linear_cka(fa.X[rows], data.X[sorted(keep)]),
                                    abs=1e-5)
    assert report["names"] == ["alexnet__random", "alexnet__random", "resnet18@random",
                               "vgg19@random"]  # file names where two would read the same
    saved = json.loads(open(report["json"]).read())
    assert saved["cka"] == report["cka"] and saved["estimator"] == "linear CKA"
    assert open(report["heatmap"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert report["json"].startswith(str(cache / "toy" / "analysis" / "cka"))


def test_cka_bad_inputs(tmp_path):
    from featbank.analysis.cka import cka

    one = write_toy_cache(tmp_path / "c1", name="one")
    [a] = (one / "features").glob("resnet18*.h5")
    # other ids altogether
    data = read_features(a)
    other = FeatureWriter(tmp_path / "other.h5", data.provenance)
    other.add_batch([f"x/{i}" for i in data.ids], data.X)
    other.merge()
    with pytest.raises(ValueError, match="no image ids in common"):
        cka(CkaConfig(features=[str(a), str(other.path)], cache_root=str(tmp_path),
                      progress=False))
    with pytest.raises(ValueError, match="at least two"):
        CkaConfig(features=[str(a)])
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        CkaConfig(features=[str(a), str(tmp_path / "missing.h5")])


def test_a_networks_layers_come_in_depth_order_named_by_layer(tmp_path):
    from helpers import write_layered_cache

    from featbank.analysis.cka import cka

    folder = write_layered_cache(tmp_path)
    files = sorted((folder / "features").glob("*.h5"), reverse=True)  # final, layer3, layer1
    report = cka(CkaConfig(features=[str(f) for f in files], cache_root=str(tmp_path),
                           progress=False))
    assert report["names"] == ["resnet18@random:layer1", "resnet18@random:layer3",
                               "resnet18@random"]
    assert [p.rsplit("/", 1)[1] for p in report["features"]] == [
        "resnet18__random__layer1.h5", "resnet18__random__layer3.h5", "resnet18__random.h5"]
    assert np.allclose(np.diag(report["cka"]), 1.0)
