"""The Ray engine writes the local engine's file: same path, ids, features, skipped list.

A local Ray (``ray.init(num_cpus=2)``) is started once for the module.
"""
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'featbank[ray]'")

from featbank.data.collection import from_folder  # noqa: E402
from featbank.extraction.engine import ExtractConfig, extract  # noqa: E402
from featbank.store.features import read_features

pytestmark = pytest.mark.slow  # subprocesses or a Ray instance: make test-fast skips these


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _extract(root, cache, engine, **kw):
    config = ExtractConfig(backbones="squeezenet1_1,resnet18", weights="random",
                           cache_root=str(cache), batch_size=4, workers=0, progress=False,
                           device="cpu", engine=engine, **kw)
    return extract(from_folder(root), config)


@pytest.fixture
def folder_with_a_bad_file(image_folder):
    (image_folder / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return image_folder


def test_ray_writes_the_local_file(tmp_path, folder_with_a_bad_file):
    local = _extract(folder_with_a_bad_file, tmp_path / "local", "local")
    remote = _extract(folder_with_a_bad_file, tmp_path / "ray", "ray")
    for a, b in zip(local, remote):
        assert b.path.relative_to(tmp_path / "ray") == a.path.relative_to(tmp_path / "local")
        mine, theirs = read_features(a.path), read_features(b.path)
        assert theirs.ids == mine.ids and len(mine.ids) == 12
        np.testing.assert_allclose(theirs.X, mine.X, rtol=1e-4, atol=1e-6)
        assert theirs.skipped == mine.skipped and list(mine.skipped) == ["dogs/broken.jpg"]
        made = ("backbone", "weights", "input_size", "precision", "fold_bn")
        assert {k: theirs.provenance[k] for k in made} == {k: mine.provenance[k] for k in made}
    assert [bool(read_features(r.path).provenance["fold_bn"]) for r in remote] == [False, True]
    assert (tmp_path / "ray" / "images" / "skipped.csv").read_text() == \
        (tmp_path / "local" / "images" / "skipped.csv").read_text()


def test_ray_completes_a_file_begun_locally(tmp_path, image_folder):
    whole = _extract(image_folder, tmp_path / "whole", "local")
    moved = image_folder.parent / "later"
    moved.mkdir()
    (image_folder / "dogs").rename(moved / "dogs")
    _extract(image_folder, tmp_path / "grown", "local")  # the cats first, on this machine
    (moved / "dogs").rename(image_folder / "dogs")
    [report, _] = _extract(image_folder, tmp_path / "grown", "ray")
    assert report.n_new == 6
    grown, reference = read_features(report.path), read_features(whole[0].path)
    order = [grown.ids.index(i) for i in reference.ids]
    np.testing.assert_allclose(grown.X[order], reference.X, rtol=1e-4, atol=1e-6)


def test_ray_options_are_checked_when_the_config_is_built():
    with pytest.raises(ValueError, match="unknown --engine 'spark'"):
        ExtractConfig(backbones="resnet18", engine="spark")
    with pytest.raises(ValueError, match="--ray-actors must be at least 1"):
        ExtractConfig(backbones="resnet18", engine="ray", ray_actors=0)


def test_ray_tasks_fetch_a_iiif_collection_and_write_the_local_file(tmp_path, image_folder):
    from iiif_server import image_requests, serve

    from featbank.data.iiif_static import write_layout
    from featbank.data.sources import open_collection

    images = sorted(p for p in image_folder.rglob("*.jpg"))
    site = tmp_path / "site"
    reports = {}
    with serve(site) as server:
        write_layout([(p, {"genre": p.parent.name}) for p in images], site, server.base)
        for engine in ("local", "ray"):
            config = ExtractConfig(backbones="squeezenet1_1", weights="random", batch_size=4,
                                   cache_root=str(tmp_path / engine), workers=0,
                                   progress=False, device="cpu", engine=engine)
            found = open_collection(cache=config.cache_root, iiif=f"{server.base}/manifest.json")
            [reports[engine]] = extract(found, config)
        assert image_requests(server) == 2 * len(images)  # each engine fetched its own copy
    mine, theirs = read_features(reports["local"].path), read_features(reports["ray"].path)
    assert theirs.ids == mine.ids and len(mine.ids) == len(images)
    np.testing.assert_allclose(theirs.X, mine.X, rtol=1e-4, atol=1e-6)
    stored = tmp_path / "ray" / "127.0.0.1" / "iiif" / "images"
    assert sorted(p.relative_to(stored).as_posix() for p in stored.rglob("*.jpg")) == mine.ids
