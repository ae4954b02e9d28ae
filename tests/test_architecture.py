"""The house's design holds: the import contracts in setup.cfg are kept, they catch an
upward import or a circle (lazy ones included), and no module outgrows its room."""
import ast
import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports over the featbank package under ``root``, with the repo's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / "setup.cfg"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def house(tmp_path) -> Path:
    """A copy of the package and its contracts, to break on purpose."""
    shutil.copytree(REPO / "featbank", tmp_path / "featbank",
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    kept = configparser.ConfigParser()
    for section in config.sections():
        if section.startswith("importlinter"):
            kept[section] = config[section]
    with open(tmp_path / "setup.cfg", "w") as fh:
        kept.write(fh)
    return tmp_path


def _inject(path: Path, lines: str) -> None:
    path.write_text(path.read_text() + "\n\n" + lines + "\n")


def test_the_contracts_are_kept():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_a_core_module_importing_a_stage_breaks_the_layers(house):
    _inject(house / "featbank/store/results.py",
            "def _sneaky():\n    from featbank.extraction.engine import extract\n    return extract")
    result = _lint(house)
    assert result.returncode == 1, result.stdout
    assert "featbank.store is not allowed to import featbank.extraction" in result.stdout
    assert "featbank.store.results -> featbank.extraction.engine" in result.stdout


def test_one_stage_importing_another_breaks_their_independence(house):
    _inject(house / "featbank/finetuning/train.py",
            "import featbank.classification.grid  # noqa")
    result = _lint(house)
    assert result.returncode == 1
    assert "featbank.finetuning is not allowed to import featbank.classification" in result.stdout


def test_a_lazy_circle_is_found(house):
    # data.tasks imports data.collection; a function-level import back closes a circle
    _inject(house / "featbank/data/collection.py",
            "def _split_of(c):\n    from featbank.data.tasks import make_split\n    return make_split")
    result = _lint(house)
    assert result.returncode == 1
    assert "No cycles are allowed in featbank.data" in result.stdout


def test_torch_in_the_store_is_refused(house):
    _inject(house / "featbank/store/provenance.py", "import torch  # noqa")
    result = _lint(house)
    assert result.returncode == 1
    assert "featbank.store.provenance -> torch" in result.stdout


def _modules():
    return sorted((REPO / "featbank").rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_outgrows_its_room(path):
    """Modules stay under 400 lines and functions under 60: a module past its room splits
    into modules of its package, a function into functions."""
    text = path.read_text()
    assert len(text.splitlines()) < 400
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno < 60, f"{node.name} at line {node.lineno}"
