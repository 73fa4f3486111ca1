"""cli_main: how every raymc CLI reports a user error."""

from __future__ import annotations

import importlib

import pytest

from raymc.errors import DataError, cli_main
from tests.helpers import without_ray_lines


def test_a_user_error_is_one_line_on_stderr_and_exit_status_2(capsys):
    @cli_main
    def main(argv: list[str] | None = None) -> int:
        raise DataError(f"{argv[0]}: no dataset_info.json\nprepare the folder with raymc.prepare first")

    assert main(["/data/nyu"]) == 2
    captured = capsys.readouterr()
    assert without_ray_lines(captured.out) == ""
    assert (
        without_ray_lines(captured.err)
        == "error: /data/nyu: no dataset_info.json prepare the folder with raymc.prepare first\n"
    )


def test_a_main_that_succeeds_keeps_its_status_and_output(capsys):
    @cli_main
    def main(argv: list[str] | None = None) -> int:
        print("wrote 3 rows")
        return 0

    assert main([]) == 0
    assert without_ray_lines(capsys.readouterr().out) == "wrote 3 rows\n"


def test_errors_that_are_not_the_users_propagate():
    @cli_main
    def main(argv: list[str] | None = None) -> int:
        raise RuntimeError("a bug in raymc")

    with pytest.raises(RuntimeError, match="a bug"):
        main(None)


@pytest.mark.parametrize("cli", ["evaluate", "predict", "prepare", "results", "train", "tune.cli"])
def test_every_cli_reports_user_errors_this_way(cli):
    main = importlib.import_module(f"raymc.{cli}").main
    assert getattr(main, "__wrapped__", None) is not None, f"raymc.{cli}.main is not wrapped in cli_main"
