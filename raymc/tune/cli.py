"""The command line of `python -m raymc.tune` (also the `raymc-tune` script): search
hyperparameters with Ray Tune, Optuna (TPE) and ASHA early stopping.

Every trial is a distributed Ray Train run of the one training loop, started from a Tune function
trainable. With no arguments a small search runs on the demo NYU set on a local Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna

from raymc.config import TrainConfig, add_config_arguments, build_config, load_yaml
from raymc.errors import cli_main
from raymc.flags import flag_names
from raymc.seed_compat import add_seed_script_arguments
from raymc.tune.experiment import SearchSettings, run_search
from raymc.tune.space import DEFAULT_SPACE, SearchSpace, format_params, load_space

if TYPE_CHECKING:
    from raymc.results import Results

# Defaults of a search that differ from a single run's: one worker per trial, so trials run side by side.
TUNE_DEFAULTS: dict[str, Any] = {"num_workers": 1}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raymc.tune",
        description="Search hyperparameters: Ray Tune runs trials (each a Ray Train run), Optuna "
        "(TPE) proposes them, ASHA stops poor ones early. Training flags are fixed for all trials. "
        "With no arguments: a small search on the demo NYU Depth V2 set on a local Ray.",
        argument_default=argparse.SUPPRESS,
    )
    search = parser.add_argument_group("search")
    search.add_argument(
        *flag_names("space"),
        default=DEFAULT_SPACE,
        help="search space: a .py file or a name in tune_spaces/ (default: %(default)s)",
    )
    search.add_argument(*flag_names("num_samples"), type=int, default=8, help="number of trials (default: %(default)s)")
    search.add_argument(
        *flag_names("max_concurrent_trials"),
        type=int,
        default=None,
        help="trials at once (default: what the cluster holds: GPUs / GPUs per trial; "
        "on CPUs, half the CPUs / workers per trial)",
    )
    search.add_argument(
        *flag_names("workers_per_trial"),
        dest="num_workers",
        type=int,
        metavar="W",
        help="Ray Train workers per trial (default: 1); same as --num-workers",
    )
    search.add_argument(*flag_names("metric"), default="val_acc", help="metric to optimize (default: %(default)s)")
    search.add_argument(
        *flag_names("mode"),
        choices=("min", "max"),
        default=None,
        help="minimize or maximize --metric (default: min for losses, else max)",
    )
    search.add_argument(
        *flag_names("grace_period"),
        type=int,
        default=1,
        help="ASHA: epochs every trial runs before it can be stopped (default: %(default)s)",
    )
    search.add_argument(
        *flag_names("reduction_factor"),
        type=float,
        default=2.0,
        help="ASHA: 1 in this many trials goes on at each rung (default: %(default)s)",
    )
    search.add_argument(
        "--sampler",
        choices=("tpe", "random"),
        default="tpe",
        help="Optuna sampler, seeded with --seed (default: %(default)s)",
    )
    search.add_argument(
        "--scheduler",
        choices=("asha", "fifo"),
        default="asha",
        help="asha stops poor trials early; fifo runs every trial to the end (default: %(default)s)",
    )
    search.add_argument(
        "--resume", action="store_true", default=False, help="continue the interrupted experiment OUT/NAME"
    )
    parser.add_argument("--config", help="YAML file of training settings (same names as the flags; flags win)")
    add_config_arguments(parser)
    add_seed_script_arguments(parser)
    _set_help(parser, "epochs", "epochs per trial, also ASHA's max_t (default: the space's FIXED, or 90)")
    _set_help(parser, "name", "experiment name: written to OUT/NAME (default: tune-<space>-<hash of the settings>)")
    _set_help(
        parser, "out", "storage path: experiments are written to OUT/NAME, trial runs to OUT/NAME/trials/<trial_id>"
    )
    _set_help(parser, "num_workers", "Ray Train workers per trial (default: 1)")
    return parser


def _set_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Say what a training flag means for a search (the same field, a different scope)."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings[0].startswith("--"):
            action.help = text


SEARCH_FLAGS = tuple(f.name for f in dataclasses.fields(SearchSettings))


def experiment_config(
    cli_values: Mapping[str, Any], *, yaml_path: str | None, space: SearchSpace, metric: str
) -> TrainConfig:
    """Every trial's fixed settings: defaults < demo defaults < search defaults < the space's FIXED
    < YAML < flags. --monitor follows --metric (so best_model.pt is the best epoch by it)."""
    values = {**TUNE_DEFAULTS, **space.fixed, **(load_yaml(yaml_path) if yaml_path else {}), **cli_values}
    monitors = TrainConfig.__dataclass_fields__["monitor"].metadata["choices"]
    if metric in monitors:
        values.setdefault("monitor", metric)
    return build_config(values)


def _print_results(results: Results) -> None:
    print(f"\nexperiment folder: {results.path}")
    print(results.format_top(10))
    best = results.best_config
    if best.get("trial_id"):
        print(f"\nbest trial {best['trial_id']}: {best['metric']} {best['value']:.4f} at epoch {best['epoch']}")
        print("  " + format_params(best["config"]))
        print(f"  weights: {best['best_model']}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = vars(get_args_parser().parse_args(argv))
    settings = SearchSettings(**{key: args.pop(key) for key in SEARCH_FLAGS})
    yaml_path = args.pop("config", None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    space = load_space(settings.space)
    config = experiment_config(args, yaml_path=yaml_path, space=space, metric=settings.metric)
    results = run_search(config, settings, space)
    _print_results(results)
    print(f"search time: {time.perf_counter() - started:.0f} s")
    return 0


def cli() -> None:
    sys.exit(main())
