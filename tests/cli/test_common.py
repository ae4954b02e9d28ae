"""The command lines' contract for errors: the user's are one line and exit 2, featbank's
own are one line that says so and exit 3, and a traceback only on request."""
import errno

import pytest

from featbank.cli.common import EXIT_BAD_INPUT, EXIT_INTERNAL, run
from featbank.core.errors import BadInput, DamagedFile, MissingFile, WriteFailed


def _failing(err):
    def main(argv=None):
        raise err
    return main


@pytest.mark.parametrize("err", [BadInput("unknown head 'tree'; choose from softmax"),
                                 MissingFile("weights file w.pth not found"),
                                 DamagedFile("f.h5 lacks its shard"),
                                 WriteFailed(errno.ENOSPC, "cannot write results.jsonl"),
                                 PermissionError(errno.EACCES, "Permission denied: 'cache'")])
def test_what_the_user_can_fix_is_one_line_and_exit_2(capsys, monkeypatch, err):
    monkeypatch.delenv("FEATBANK_DEBUG", raising=False)
    assert run(_failing(err)) == EXIT_BAD_INPUT
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "internal" not in line


@pytest.mark.parametrize("err", [ValueError("Input contains NaN."), KeyError("top1"),
                                 OSError("Unable to synchronously open file")])
def test_featbank_s_own_bugs_are_not_blamed_on_the_user(capsys, monkeypatch, err):
    monkeypatch.delenv("FEATBANK_DEBUG", raising=False)
    assert run(_failing(err)) == EXIT_INTERNAL
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"internal error: {type(err).__name__}: ")
    assert "please report it; FEATBANK_DEBUG=1 shows the traceback" in line


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("FEATBANK_DEBUG", "1")
    with pytest.raises(ValueError, match="NaN"):
        run(_failing(ValueError("Input contains NaN.")))


@pytest.mark.parametrize("script,args", [
    ("extract", ["--backbone", "squeezenet1_1", "--weights", "/no/such.pth"]),
    ("extract", ["--backbone", "squeezenet1_1", "--weights", "random", "--device", "cuda:7"]),
    ("finetune", ["--backbone", "squeezenet1_1", "--task", "label", "--init", "/no/such.pth"]),
    ("finetune", ["--backbone", "squeezenet1_1", "--task", "label", "--collection", "none"]),
    ("classify", ["--head", "tree"])])
def test_bad_options_and_files_fail_before_torch_is_imported(script, args, tmp_path):
    """What the user can fix fails in one line without loading torch (or scikit-learn):
    the docs promise such a line in well under two seconds."""
    import subprocess
    import sys

    from helpers import REPO, script_env

    probe = (f"import sys; from featbank.cli.common import run; from featbank.cli.{script} "
             f"import main; code = run(main, {args!r}); "
             "print('torch' in sys.modules, 'sklearn' in sys.modules, code)")
    if args[-1] == "cuda:7":  # on a machine with a GPU driver, torch is needed to say no
        from featbank.core.hardware import nvidia_driver
        if nvidia_driver():
            pytest.skip("this machine has an NVIDIA driver")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, env=script_env(), timeout=60)
    assert done.stdout.split() == ["False", "False", "2"], done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")


@pytest.mark.parametrize("script", ["extract", "classify", "finetune", "analyze", "verify"])
def test_help_examples_keep_their_line_breaks(script):
    """An example continued with a backslash shows as two lines, not one with a run of
    spaces where the break was."""
    import importlib
    import re

    text = importlib.import_module(f"featbank.cli.{script}").get_args_parser().format_help()
    examples = text.split("Examples:", 1)[-1]
    assert not re.search(r"\S {5,}--", examples), examples
