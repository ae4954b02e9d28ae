"""Shared fixtures: tiny generated image collections (CPU, offline, fast)."""
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HERITAGE, REPO, REQUIRE_SHARED, SHARED, SQUEEZENET, make_image, script_env


def pytest_sessionstart(session):
    """Under CI the real data must be there: a missing ../shared fails the run at once."""
    if REQUIRE_SHARED and not (HERITAGE.is_dir() and SQUEEZENET.is_file()):
        raise pytest.UsageError(f"FEATBANK_REQUIRE_SHARED=1 but {SHARED} lacks data/heritage or "
                                "weights/squeezenet1_1-imagenet.pth")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two classes x 6 images; the same file name in both class folders."""
    root = tmp_path / "images"
    for c, cls in enumerate(["cats", "dogs"]):
        for k in range(6):
            make_image(root / cls / f"img{k}.jpg", seed=10 * c + k, quality=95)
    return root


@pytest.fixture
def run_script(tmp_path):
    """Run a top-level script in a subprocess from tmp_path; returns CompletedProcess."""
    def run(script, *args, timeout=300):
        return subprocess.run([sys.executable, str(REPO / script), *map(str, args)],
                              cwd=tmp_path, capture_output=True, text=True, env=script_env(),
                              timeout=timeout)
    return run




@pytest.fixture(autouse=True, scope="session")
def _remembered_hashes(tmp_path_factory):
    """Weights digests are remembered in a file of the session's, not the user's cache."""
    import os

    os.environ["FEATBANK_HASHES"] = str(tmp_path_factory.mktemp("hashes") / "sha256.json")
