"""extract.py as a user runs it: exit codes, one-line errors, kill and resume, real images."""
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers import (
    HERITAGE,
    REPO,
    SQUEEZENET,
    assert_one_line_error,
    make_image,
    needs_heritage,
    needs_squeezenet,
    script_env,
)
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from featbank.store.features import read_features

pytestmark = pytest.mark.slow  # subprocesses or a Ray instance: make test-fast skips these



def test_unknown_backbone(run_script, image_folder):
    assert_one_line_error(run_script("extract.py", "--backbone", "nope", "--images", image_folder),
                    "unknown backbone 'nope'")


def test_missing_folder(run_script, tmp_path):
    assert_one_line_error(run_script("extract.py", "--backbone", "squeezenet1_1", "--images",
                               tmp_path / "nowhere"), "does not exist")


def test_empty_collection(run_script, tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    assert_one_line_error(run_script("extract.py", "--backbone", "squeezenet1_1", "--images",
                               tmp_path / "empty"), "no images found")


def test_csv_without_named_column(run_script, tmp_path):
    make_image(tmp_path / "a.jpg", seed=0)
    (tmp_path / "m.csv").write_text("ImageId,style\na,x\n")
    assert_one_line_error(run_script("extract.py", "--backbone", "squeezenet1_1", "--manifest",
                               tmp_path / "m.csv", "--label-columns", "artist"),
                    "no column 'artist'")


def test_missing_weights_file(run_script, image_folder):
    assert_one_line_error(run_script("extract.py", "--backbone", "squeezenet1_1", "--images",
                               image_folder, "--weights", "nope.pth"), "nope.pth not found")


def test_bad_options_fail_fast_and_before_any_work(tmp_path):
    """The data layer and parsers do not import torch: a bad folder is one line, fast."""
    code = (f"import runpy, sys; from featbank.cli.common import run; "
            f"main = runpy.run_path({str(REPO / 'extract.py')!r})['main']; "
            f"code = run(main, ['--backbone', 'squeezenet1_1', '--images', '/no/such/dir']); "
            f"print(code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=script_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
    assert "image folder /no/such/dir does not exist" in out.stderr


def test_bad_options_on_a_complete_cache(run_script, image_folder):
    base = ["--backbone", "squeezenet1_1", "--weights", "random", "--images", image_folder,
            "--no-progress"]
    assert run_script("extract.py", *base, "--workers", "0").returncode == 0
    assert_one_line_error(run_script("extract.py", *base, "--batch-size", "0"),
                          "--batch-size: must be at least 1, not 0")
    assert_one_line_error(run_script("extract.py", *base, "--workers", "-1"),
                          "--workers: must be at least 0, not -1")
    assert_one_line_error(run_script("extract.py", *base, "--device", "tpu"), "unknown --device")


@needs_squeezenet
def test_a_file_copied_to_a_pinned_name_is_never_labelled_with_the_pinned_weights(
        run_script, tmp_path, image_folder):
    """The old offline recipe (copy a weights file to torchvision's hashed name) is refused in
    one line; the same file given as --weights PATH is recorded by its own hash."""
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(SQUEEZENET, checkpoints / "squeezenet1_1-b8a52dc0.pth")
    env = {**script_env(), "TORCH_HOME": str(tmp_path / "torch")}
    args = [sys.executable, str(REPO / "extract.py"), "--backbone", "squeezenet1_1", "--images",
            str(image_folder), "--workers", "0", "--no-progress"]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert_one_line_error(result, "has the name of torchvision:squeezenet1_1.IMAGENET1K_V1 "
                                  "(sha256 b8a52dc0...) but its sha256 is 6701bb3d0ded...")
    assert not list((tmp_path / "cache/images/features").glob("*imagenet*.h5"))
    result = subprocess.run(args + ["--weights", str(checkpoints / "squeezenet1_1-b8a52dc0.pth")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [path] = (tmp_path / "cache/images/features").glob("*.h5")
    with h5py.File(path) as f:
        assert f.attrs["weights"] == f.attrs["weights_exact"] == \
            "sha256:6701bb3d0ded9d21616f62471566e98b296ea5a9ff1960815c441c5c33e5dbaf"
    run_script("extract.py", "--backbone", "squeezenet1_1", "--images", image_folder,
               "--workers", "0", "--no-progress", "--weights", SQUEEZENET)
    assert list((tmp_path / "cache/images/features").glob("*.h5")) == [path]  # one file, one row


def test_offline_imagenet_is_one_line(tmp_path, image_folder):
    """No weights cached and no way out (a dead proxy): one line naming the file to place."""
    result = subprocess.run([sys.executable, str(REPO / "extract.py"), "--backbone", "alexnet",
                             "--images", str(image_folder), "--workers", "0", "--no-progress"],
                            cwd=tmp_path, env={**script_env(), "TORCH_HOME": str(tmp_path / "torch"),
                                               "no_proxy": "", "https_proxy": "http://127.0.0.1:9"},
                            capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, "alexnet-owt-7be5be79.pth")
    assert "--weights PATH" in result.stderr and "Downloading" not in result.stdout
    assert not (tmp_path / "cache/images/features").exists() or \
        not list((tmp_path / "cache/images/features").glob("*.h5"))


def test_demo_collection_by_default(run_script, tmp_path):
    result = run_script("extract.py", "--backbone", "squeezenet1_1", "--weights", "random",
                        "--no-progress", "--workers", "0")
    assert result.returncode == 0, result.stderr
    assert "320 rows" in result.stdout
    assert (tmp_path / "cache/demo/features/squeezenet1_1__random.h5").is_file()


KILL_AFTER_PARTS = 5  # of 12: mid-run, with parts on disk and batches in flight


def test_killed_run_resumes_to_the_uninterrupted_file(tmp_path):
    images = tmp_path / "imgs"
    for k in range(48):
        make_image(images / f"c{k % 2}" / f"{k}.jpg", seed=k, size=(64, 64))
    base = [sys.executable, str(REPO / "extract.py"), "--backbone", "squeezenet1_1",
            "--weights", "random", "--images", str(images), "--batch-size", "4",
            "--workers", "1", "--no-progress"]
    clean = subprocess.run(base + ["--cache", "clean"], cwd=tmp_path, env=script_env(),
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    parts = tmp_path / "killed/imgs/features/squeezenet1_1__random.h5.parts"
    target = KILL_AFTER_PARTS
    proc = subprocess.Popen(base + ["--cache", "killed"], cwd=tmp_path, env=script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("*.npz"))) >= target:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(base + ["--cache", "killed"], cwd=tmp_path, env=script_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    a = read_features(tmp_path / "clean/imgs/features/squeezenet1_1__random.h5")
    b = read_features(tmp_path / "killed/imgs/features/squeezenet1_1__random.h5")
    assert a.ids == b.ids and np.array_equal(a.X, b.X)


def _half_split_score(path) -> float:
    data = read_features(path)
    labels = [i.split("/")[0] for i in data.ids]
    xa, xb, ya, yb = train_test_split(data.X, labels, test_size=0.5, random_state=0)
    return LogisticRegression(max_iter=2000).fit(xa, ya).score(xb, yb)


@needs_heritage
@needs_squeezenet
def test_heritage_imagenet_features_separate_the_classes(run_script, tmp_path):
    """The issue's acceptance: 1,404 x 512; LogisticRegression >= 0.85 (random weights <= 0.65)."""
    scores = {}
    for weights in (str(SQUEEZENET), "random"):
        result = run_script("extract.py", "--backbone", "squeezenet1_1", "--weights", weights,
                            "--images", HERITAGE / "test", "--no-progress", timeout=600)
        assert result.returncode == 0, result.stderr
        [path] = (tmp_path / "cache/test/features").glob(
            "*random.h5" if weights == "random" else "*sha256*.h5")
        data = read_features(path)
        assert data.X.shape == (1404, 512) and len(set(data.ids)) == 1404
        scores[weights] = _half_split_score(path)
    assert scores[str(SQUEEZENET)] >= 0.85
    assert scores["random"] <= 0.65


def test_layers_prints_a_line_per_layer_and_refuses_an_unknown_one(run_script, image_folder):
    out = run_script("extract.py", "--backbone", "squeezenet1_1", "--weights", "random",
                     "--images", image_folder, "--layers", "features.3,final", "--no-progress",
                     "--workers", "0")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("squeezenet1_1 features.3: 12 rows in cache/images/features/"
                               "squeezenet1_1__random__features.3.h5 (12 added now)")
    assert lines[1].startswith("squeezenet1_1: 12 rows in cache/images/features/"
                               "squeezenet1_1__random.h5")
    assert_one_line_error(run_script("extract.py", "--backbone", "squeezenet1_1", "--weights",
                                     "random", "--images", image_folder, "--layers", "stage9"),
                          "--layers 'stage9': no such layer in squeezenet1_1, which has "
                          "features.0, features.3")


def test_iiif_options_that_make_no_sense_are_one_line(run_script, tmp_path, image_folder):
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"type": "Manifest", "id": "http://x/m", "items": []}')
    base = ["extract.py", "--backbone", "squeezenet1_1", "--weights", "random"]
    assert_one_line_error(run_script(*base, "--images", image_folder, "--offline"),
                          "--offline is for --iiif")
    assert_one_line_error(run_script(*base, "--iiif", manifest, "--iiif-rate", "0"),
                          "--iiif-rate must be above 0")
    assert_one_line_error(run_script(*base, "--iiif", manifest), "lists no canvas")
    assert not (tmp_path / "cache").exists()  # nothing was, so nothing is left behind
    assert_one_line_error(run_script(*base, "--iiif", tmp_path / "none.json"),
                          "does not exist")
    (tmp_path / "page.json").write_text("<html>not json</html>")
    assert_one_line_error(run_script(*base, "--iiif", tmp_path / "page.json"), "is not JSON")
