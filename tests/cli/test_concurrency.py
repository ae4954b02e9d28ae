"""Real processes on one cache at once, and kills: nothing corrupted, nothing lost, no cell twice.

No mocks of the lock: every test starts the scripts as users do.
"""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, make_image, script_env, write_toy_cache

from featbank.store.features import read_features

pytestmark = pytest.mark.slow  # subprocesses: make test-fast skips these


def _start(tmp_path, script, *args):
    return subprocess.Popen([sys.executable, str(REPO / script), *map(str, args)], cwd=tmp_path,
                            env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out, err


def test_two_extractions_at_once_then_a_third_equal_one_run(tmp_path):
    images = tmp_path / "imgs"
    for k in range(96):
        make_image(images / f"c{k % 3}" / f"{k}.jpg", seed=k, size=(48, 48))
    base = ["--backbone", "squeezenet1_1", "--weights", "random", "--images", images,
            "--workers", "0", "--no-progress"]
    single = subprocess.run([sys.executable, str(REPO / "extract.py"), *map(str, base),
                             "--cache", "single"], cwd=tmp_path, env=script_env(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    runs = [_start(tmp_path, "extract.py", *base, "--batch-size", size, "--cache", "shared")
            for size in (16, 48)]
    outputs = [_finish(p) for p in runs]
    third, _ = _finish(_start(tmp_path, "extract.py", *base, "--cache", "shared"))
    assert "96 rows in " in third and "(0 added now)" in third
    new = sorted(int(out.split("(")[1].split(" added now")[0]) for out, _ in outputs)
    assert new == [0, 96]  # one did the work; the other waited and found it done
    a = read_features(tmp_path / "single/imgs/features/squeezenet1_1__random.h5")
    b = read_features(tmp_path / "shared/imgs/features/squeezenet1_1__random.h5")
    assert len(b.ids) == len(set(b.ids)) == 96 and sorted(a.ids) == sorted(b.ids)
    order = [b.ids.index(i) for i in a.ids]
    assert np.allclose(a.X, b.X[order], atol=1e-5)


def _store(folder):
    lines = (folder / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line parses
    return rows


def test_two_classify_grids_at_once_store_each_cell_once(tmp_path):
    folder = write_toy_cache(tmp_path / "cache")
    args = ["--head", "all", "--task", "style", "--collection", "toy", "--cache", "cache",
            "--jobs", "1"]
    for out, err in [_finish(p) for p in [_start(tmp_path, "classify.py", *args) for _ in range(2)]]:
        assert "| style |" in out
    rows = _store(folder)
    cells = [r["cell"] for r in rows]
    assert len(cells) == len(set(cells)) == 5 * 2  # 5 heads x 2 feature files


def test_a_killed_grid_resumes_with_the_cells_it_had_not_finished(tmp_path):
    folder = write_toy_cache(tmp_path / "cache")
    args = ["--head", "all", "--task", "style", "--collection", "toy", "--cache", "cache",
            "--jobs", "1"]
    proc = _start(tmp_path, "classify.py", *args)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        store = folder / "results.jsonl"
        if store.is_file() and len(store.read_text().splitlines()) >= 3:
            break  # killed with three of ten cells stored
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = len(_store(folder))
    assert 3 <= done < 10
    _, err = _finish(_start(tmp_path, "classify.py", *args))
    assert f"reusing {done} cells" in err
    cells = [r["cell"] for r in _store(folder)]
    assert len(cells) == len(set(cells)) == 10


def test_two_fine_tunings_with_the_same_settings_train_once(tmp_path):
    for c, cls in enumerate(["icon", "vase"]):
        for k in range(12):
            make_image(tmp_path / "art" / cls / f"{k}.png", seed=100 * c + k, size=(48, 48))
    args = ["--backbone", "squeezenet1_1", "--init", "random", "--image-size", "48",
            "--batch-size", "4", "--workers", "0", "--min-per-class", "3", "--no-progress",
            "--task", "label", "--images", "art", "--epochs", "2"]
    runs = [_start(tmp_path, "finetune.py", *args) for _ in range(2)]
    outputs = [_finish(p) for p in runs]
    assert outputs[0][0] == outputs[1][0]  # the same result line
    assert sum("epoch 1:" in err for _, err in outputs) == 1  # trained by one of them
    assert len(_store(tmp_path / "cache" / "art")) == 1
