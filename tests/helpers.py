"""Small helpers shared by tests."""

from __future__ import annotations

import re

import pytest

# Ray forwards its own processes' log lines to the driver's stderr, e.g. "(pid=gcs_server) ..." or
# "(raylet) ...", possibly coloured; they are Ray's output, not the CLI's.
RAY_FORWARDED_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\((pid=|raylet|gcs_server)")


def raymc_stderr(capsys: pytest.CaptureFixture) -> str:
    """What the code under test wrote to stderr, without the log lines Ray forwards from its processes."""
    lines = capsys.readouterr().err.splitlines(keepends=True)
    return "".join(line for line in lines if not RAY_FORWARDED_LINE.match(line))
