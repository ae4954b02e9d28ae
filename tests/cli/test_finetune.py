"""finetune.py as a user runs it: errors, a real kill and resume, real heritage images."""
import csv
import signal
import subprocess
import sys
import time

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

pytestmark = pytest.mark.slow  # subprocesses or a Ray instance: make test-fast skips these



@pytest.fixture
def art(tmp_path):
    for c, cls in enumerate(["icon", "vase"]):
        for k in range(12):
            make_image(tmp_path / "art" / cls / f"{k}.png", seed=100 * c + k, size=(48, 48))
    return tmp_path / "art"


BASE = ["--backbone", "squeezenet1_1", "--init", "random", "--image-size", "48",
        "--batch-size", "4", "--workers", "0", "--min-per-class", "3", "--no-progress"]


def test_bad_input(run_script, art):
    assert_one_line_error(run_script("finetune.py", *BASE, "--task", "label", "--images", art,
                               "--freeze", "most"), "--freeze 'most'")
    assert_one_line_error(run_script("finetune.py", *BASE, "--task", "genre", "--images", art),
                    "unknown task 'genre'")
    assert_one_line_error(run_script("finetune.py", "--backbone", "nope", "--task", "label",
                               "--images", art), "unknown backbone")
    assert_one_line_error(run_script("finetune.py", "--backbone", "squeezenet1_1", "--task", "label",
                               "--images", art, "--init", "missing.pth"), "not found")
    for epochs in ("0", "-1"):
        assert_one_line_error(run_script("finetune.py", *BASE, "--task", "label", "--images", art,
                                         "--epochs", epochs), "--epochs must be at least 1")
    assert not (art.parent / "cache" / "art" / "finetune").exists()  # no empty run folders


def _run(tmp_path, cache, art):
    return subprocess.run([sys.executable, str(REPO / "finetune.py"), *BASE, "--task", "label",
                           "--images", str(art), "--epochs", "3", "--cache", cache],
                          cwd=tmp_path, env=script_env(), capture_output=True, text=True,
                          timeout=600)


def test_killed_in_second_epoch_resumes_to_the_same_metrics(tmp_path, art):
    clean = _run(tmp_path, "clean", art)
    assert clean.returncode == 0, clean.stderr
    proc = subprocess.Popen([sys.executable, str(REPO / "finetune.py"), *BASE, "--task", "label",
                             "--images", str(art), "--epochs", "3", "--cache", "killed"],
                            cwd=tmp_path, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list((tmp_path / "killed").glob("art/finetune/*/last.pt")):
            break  # epoch 1 is saved: the run is now in its second epoch
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = _run(tmp_path, "killed", art)
    assert again.returncode == 0, again.stderr
    assert "resuming after epoch 1" in again.stderr
    assert again.stdout.split(": test top-1")[1].split(";")[0] == \
        clean.stdout.split(": test top-1")[1].split(";")[0]
    rows = (tmp_path / "killed" / "art" / "results.jsonl").read_text().splitlines()
    finished = _run(tmp_path, "killed", art)  # a finished run again: nothing new, no new row
    assert finished.returncode == 0 and finished.stdout == again.stdout
    assert (tmp_path / "killed" / "art" / "results.jsonl").read_text().splitlines() == rows
    [trunk] = (tmp_path / "killed").glob("art/finetune/*/trunk.pth")
    extracted = subprocess.run([sys.executable, str(REPO / "extract.py"), "--backbone",
                                "squeezenet1_1", "--weights", str(trunk), "--images", str(art),
                                "--cache", "killed", "--workers", "0", "--no-progress"],
                               cwd=tmp_path, env=script_env(), capture_output=True, text=True,
                               timeout=300)
    assert extracted.returncode == 0 and "24 rows" in extracted.stdout, extracted.stderr


def test_multi_label_manifest_over_repeats(run_script, tmp_path):
    rows = ["file,tags"]
    for k in range(30):
        make_image(tmp_path / "tagged" / f"{k}.png", seed=k, size=(48, 48))
        rows.append(f"{k}.png,{'abc'[k % 3]}{';' + 'bca'[k % 3] if k % 2 else ''}")
    (tmp_path / "tagged" / "tags.csv").write_text("\n".join(rows) + "\n")
    result = run_script("finetune.py", *BASE, "--task", "tags", "--manifest",
                        tmp_path / "tagged" / "tags.csv", "--multi-label", "tags",
                        "--epochs", "1", "--repeats", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum("fine-tuned on tags: test mAP " in line for line in lines) == 2
    assert lines[-1].startswith("over 2 splits: test mAP ") and "±" in lines[-1]
    assert "repeat with seed 1" in result.stderr


@needs_heritage
@needs_squeezenet
def test_heritage_short_finetune_beats_its_epoch_zero(run_script, tmp_path):
    """Real images, real ImageNet trunk, reduced for the CPU: a quarter of the training
    split at 112 pixels for two epochs."""
    result = run_script("finetune.py", "--backbone", "squeezenet1_1", "--task", "label",
                        "--images", HERITAGE / "test", "--init", SQUEEZENET, "--epochs", "2",
                        "--train-fraction", "0.25", "--image-size", "112", "--no-progress",
                        timeout=900)
    assert result.returncode == 0, result.stderr
    [history] = (tmp_path / "cache/test/finetune").glob("*/history.csv")
    rows = list(csv.DictReader(open(history)))
    assert float(rows[-1]["val_acc"]) > float(rows[0]["val_acc"])
    assert "test top-1" in result.stdout
