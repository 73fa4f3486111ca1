"""Errors a user can cause. Their messages name the file, key or flag and say what to do."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

CliMain = Callable[[list[str] | None], int]


class RaymcError(Exception):
    """Base class: the CLIs print these as one line and exit with status 2."""


class ConfigError(RaymcError):
    """A bad flag, YAML key or combination of settings."""


class DataError(RaymcError):
    """A missing, malformed or inconsistent data file or folder."""


def cli_main(main: CliMain) -> CliMain:
    """A CLI's main(argv): a RaymcError it raises is printed as `error: <message>` on one line of
    stderr, and the exit status is 2."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except RaymcError as exc:
            print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
            return 2

    return run
