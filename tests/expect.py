"""Assertions of the bad-input contract (issue 6), shared by the tests of each module: every bad input gets ONE clear
segzoo error naming the culprit and what was expected. From Python the error is :class:`segzoo.data.io.DataError`;
from the CLI a non-zero exit code and one stderr line."""

import pytest

from segzoo.cli import main
from segzoo.data.io import DataError


def expect_error(fn, culprit, *expected: str) -> str:
    """Call ``fn``; assert one DataError whose single-line message names ``culprit`` and says ``expected``."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert str(culprit) in msg, f"culprit {culprit} not named in: {msg}"
    for word in expected:
        assert word in msg, f"{word!r} not in: {msg}"
    return msg


def expect_cli_error(argv, capsys, culprit, *expected: str) -> str:
    """Run the segzoo CLI in-process; assert a non-zero exit and one ``segzoo ...: error:`` line naming ``culprit``."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err  # one line, the last one
    assert str(culprit) in errors[0], f"culprit {culprit} not named in: {errors[0]}"
    for word in expected:
        assert word in errors[0], f"{word!r} not in: {errors[0]}"
    return errors[0]
