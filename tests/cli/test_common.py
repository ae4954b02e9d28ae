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
