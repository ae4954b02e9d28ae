"""extract.py --iiif on real heritage photographs served by a loopback level-0 server: the
features of the same images read from a folder, one row per canvas, a re-run without an
image request, --offline, failures as reasons, a killed download resumed."""
import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import HERITAGE, REPO, SQUEEZENET, assert_one_line_error, script_env
from iiif_server import as_level2, image_requests, serve

import featbank as fb
from featbank.core.errors import MissingFile
from featbank.data.iiif_static import write_layout
from featbank.store.features import read_features

N = 24


def _heritage(tmp_path, n=N):
    """``n`` heritage images from three classes, and the same images as a folder."""
    chosen = []
    for label in ("bell_tower", "column", "vault"):
        chosen += sorted((HERITAGE / "test" / label).iterdir())[: n // 3]
    folder = tmp_path / "folder"
    for path in chosen:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.parent.name / path.name)
    return chosen, folder


def _extract(cache, **kw):
    return fb.extract(backbone="squeezenet1_1", weights=str(SQUEEZENET), cache=cache,
                      progress=False, workers=1, **kw)


def _by_canvas(report, server_base, chosen):
    """canvas number -> feature vector, through the catalogue."""
    features = read_features(report.path)
    rows = dict(zip(features.ids, features.X))
    with open(report.path.parents[1] / "iiif" / "canvases.csv", encoding="utf-8") as fh:
        catalogue = {r["canvas"]: r["id"] for r in csv.DictReader(fh)}
    return {k: rows[catalogue[f"{server_base}/canvas/{k}"]] for k in range(len(chosen))
            if catalogue[f"{server_base}/canvas/{k}"] in rows}


@pytest.mark.parametrize("version", [2, 3])
def test_features_are_those_of_the_folder_and_a_rerun_fetches_nothing(tmp_path, version):
    chosen, folder = _heritage(tmp_path)
    [local] = _extract(tmp_path / "cache", images=folder, precision="fp32")
    reference = read_features(local.path)
    reference = dict(zip(reference.ids, reference.X))
    site = tmp_path / "site"
    with serve(site) as server:
        write_layout([(p, {"genre": p.parent.name}) for p in chosen], site, server.base,
                     version=version)
        url = f"{server.base}/manifest.json"
        [report] = _extract(tmp_path / "cache", iiif=url, collection="museum", precision="fp32")
        first = image_requests(server)
        [again] = _extract(tmp_path / "cache", iiif=url, collection="museum", precision="fp32")
        assert image_requests(server) == first == N  # one request per canvas, none again
    assert report.n_rows == N and report.fetched == N and again.fetched == 0
    assert again.n_added == 0
    got = _by_canvas(report, server.base, chosen)
    for k, path in enumerate(chosen):
        want = reference[f"{path.parent.name}/{path.name}"]
        cosine = got[k] @ want / np.linalg.norm(got[k]) / np.linalg.norm(want)
        assert cosine >= 0.99  # the same bytes: equal in fact
    labels = fb.load_features("squeezenet1_1", collection="museum", cache=tmp_path / "cache")
    assert sorted(set(labels.labels["genre"])) == ["bell_tower", "column", "vault"]


def test_a_missing_image_and_misbehaving_server_are_reasons_not_crashes(tmp_path):
    chosen, _ = _heritage(tmp_path, n=9)
    site = tmp_path / "site"
    with serve(site, faults={"/iiif/1/full/max/0/default.jpg": "429",
                             "/iiif/2/full/max/0/default.jpg": "drop"}) as server:
        write_layout([(p, {"genre": p.parent.name}) for p in chosen], site, server.base)
        shutil.rmtree(site / "iiif" / "4")  # a canvas whose image is missing
        [report] = _extract(tmp_path / "cache", iiif=f"{server.base}/manifest.json")
        assert report.n_rows == 8 and report.n_skipped == 1
        with open(tmp_path / "cache" / "127.0.0.1" / "skipped.csv", encoding="utf-8") as fh:
            [row] = list(csv.DictReader(fh))
        assert "IIIF: could not fetch the image (HTTP 404" in row["reason"]
        write_layout([(p, {"genre": p.parent.name}) for p in chosen], site, server.base)
        [later] = _extract(tmp_path / "cache", iiif=f"{server.base}/manifest.json")
    assert later.n_rows == 9 and later.n_skipped == 0 and later.fetched == 1  # tried again


def test_offline_uses_only_what_is_stored(tmp_path):
    chosen, _ = _heritage(tmp_path, n=6)
    site = tmp_path / "site"
    with serve(site) as server:
        write_layout([(p, {"genre": p.parent.name}) for p in chosen], site, server.base)
        url = f"{server.base}/manifest.json"
        [online] = _extract(tmp_path / "cache", iiif=url)
    # the server is gone: the stored documents and images serve the run
    [offline] = _extract(tmp_path / "cache", iiif=url, offline=True)
    assert offline.n_rows == online.n_rows == 6 and offline.fetched == 0
    with pytest.raises(MissingFile, match="never fetched"):
        _extract(tmp_path / "other", iiif=url, offline=True)


@pytest.mark.slow
def test_extract_then_classify_on_the_genre_task_from_the_command_line(tmp_path):
    chosen, _ = _heritage(tmp_path, n=45)
    site, cache = tmp_path / "site", tmp_path / "cache"
    with serve(site) as server:
        write_layout([(p, {"genre": p.parent.name}) for p in chosen], site, server.base)
        run = lambda *a: subprocess.run([sys.executable, *a], cwd=tmp_path, env=script_env(),
                                        capture_output=True, text=True, timeout=600)
        url = f"{server.base}/manifest.json"
        extracted = run(str(REPO / "extract.py"), "--backbone", "squeezenet1_1", "--weights",
                        str(SQUEEZENET), "--iiif", url, "--cache", str(cache), "--no-progress")
        assert extracted.returncode == 0, extracted.stderr
        assert "45 images fetched through IIIF" in extracted.stdout
        assert_one_line_error(run(str(REPO / "extract.py"), "--backbone", "squeezenet1_1",
                                  "--iiif", url, "--images", str(site)), "not allowed with")
        assert_one_line_error(run(str(REPO / "extract.py"), "--backbone", "squeezenet1_1",
                                  "--iiif", f"{server.base}/iiif/0/info.json", "--cache",
                                  str(cache)), "not a IIIF manifest or collection")
    classified = run(str(REPO / "classify.py"), "--task", "genre", "--head", "logreg",
                     "--cache", str(cache))
    assert classified.returncode == 0, classified.stderr
    assert "genre" in classified.stdout and "squeezenet1_1" in classified.stdout


@pytest.mark.slow
def test_a_download_killed_with_sigkill_resumes_without_fetching_twice(tmp_path):
    chosen, _ = _heritage(tmp_path, n=30)
    site, cache = tmp_path / "site", tmp_path / "cache"
    with serve(site, delay=0.25) as server:
        write_layout([(p, {"genre": p.parent.name}) for p in chosen], site, server.base)
        command = [sys.executable, str(REPO / "extract.py"), "--backbone", "squeezenet1_1",
                   "--weights", str(SQUEEZENET), "--iiif", f"{server.base}/manifest.json",
                   "--cache", str(cache), "--no-progress"]
        child = subprocess.Popen(command, env=script_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        images = cache / "127.0.0.1" / "iiif" / "images"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(images.rglob("*.jpg"))) < 5:
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        stored = len(list(images.rglob("*.jpg")))
        assert 5 <= stored < 30
        before = image_requests(server)
        done = subprocess.run(command, env=script_env(), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        assert image_requests(server) - before <= 30 - stored + 8  # only what was not stored
    features = read_features(cache / "127.0.0.1" / "features" /
                             next((cache / "127.0.0.1" / "features").glob("*.h5")).name)
    assert len(features.ids) == 30 and not features.skipped
    assert not list(images.rglob(".*.part"))


def test_a_static_layout_that_names_the_full_size_by_its_pixels_still_serves(tmp_path):
    chosen, _ = _heritage(tmp_path, n=3)
    site = tmp_path / "site"
    with serve(site) as server:
        write_layout([(p, {"genre": p.parent.name}) for p in chosen], site, server.base,
                     version=2)
        for name in ("full", "max"):  # only full/64,/0/default.jpg and full/64,64/... left
            shutil.rmtree(site / "iiif" / "0" / "full" / name)
        [report] = _extract(tmp_path / "cache", iiif=f"{server.base}/manifest.json")
    assert report.n_rows == 3 and report.n_skipped == 0
    with open(tmp_path / "cache" / "127.0.0.1" / "iiif" / "canvases.csv", encoding="utf-8") as fh:
        urls = {r["canvas"]: r["image_url"] for r in csv.DictReader(fh)}
    assert urls[f"{server.base}/canvas/0"].endswith("/iiif/0/full/64,64/0/default.jpg")
    assert urls[f"{server.base}/canvas/1"].endswith("/iiif/1/full/full/0/default.jpg")


def test_a_level_2_server_is_asked_for_the_size_the_run_needs(tmp_path):
    from PIL import Image

    big = []
    for k, path in enumerate(_heritage(tmp_path, n=6)[0]):  # 64 px photographs, made large
        with Image.open(path) as im:
            big.append(tmp_path / "big" / path.parent.name / f"{k}.jpg")
            big[-1].parent.mkdir(parents=True, exist_ok=True)
            im.convert("RGB").resize((640, 480), Image.Resampling.BICUBIC).save(big[-1],
                                                                               quality=95)
    [local] = _extract(tmp_path / "disk", images=tmp_path / "big", precision="fp32")
    reference = read_features(local.path)
    reference = dict(zip(reference.ids, reference.X))
    site = tmp_path / "site"
    with serve(site, dynamic=True) as server:
        manifest = write_layout([(p, {"genre": p.parent.name}) for p in big], site, server.base)
        as_level2(manifest)
        [report] = _extract(tmp_path / "cache", iiif=f"{server.base}/manifest.json",
                            precision="fp32")
    assert report.n_rows == 6
    asked = [path for path in server.counts if path.endswith(".jpg")]
    side = 224  # what SqueezeNet's input needs: its shorter side squashed to 224
    width = math.ceil(640 * side / 480)  # 299: the aspect kept, never below the need
    assert sorted(asked) == [f"/iiif/{k}/full/{width},{side}/0/default.jpg" for k in range(6)]
    got = _by_canvas(report, server.base, big)
    for k, path in enumerate(big):
        want = reference[f"{path.parent.name}/{path.name}"]
        assert got[k] @ want / np.linalg.norm(got[k]) / np.linalg.norm(want) >= 0.99


def test_fetch_all_stores_every_image_before_it_returns(tmp_path):
    from featbank.data.sources import open_collection

    chosen, _ = _heritage(tmp_path, n=30)
    site = tmp_path / "site"
    with serve(site, delay=0.02) as server:
        write_layout([(p, {"genre": p.parent.name}) for p in chosen], site, server.base)
        found = open_collection(cache=tmp_path / "cache", iiif=f"{server.base}/manifest.json")
        found.downloads.fetch_all()  # what finetune.py --iiif does before training
        assert image_requests(server) == 30
    assert all(found.path(i).read_bytes() for i in found.ids) and found.downloads.fetched == 30
