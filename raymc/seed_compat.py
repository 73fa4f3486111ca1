"""The seed ImageNet script's spellings (full_imagenet_train.py), so its command lines and its
readers' code keep working: `--data_dir`, `--depth`, `--sd`, `--out` as the run folder itself, and
Keras-style columns in `training_history.csv`.

This module imports nothing of raymc's but its errors, so `raymc.config` can build on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from raymc.errors import ConfigError

SEED_SCRIPT_KEYS = ("data_dir", "depth", "sd")
SEED_OUT = "./results_imagenet"  # the seed script's default --out
# Keras-style names of the seed script's training_history.csv: alias -> raymc history key.
KERAS_ALIASES = {"loss": "train_loss", "accuracy": "train_acc", "val_accuracy": "val_acc"}


def add_seed_script_arguments(parser: argparse.ArgumentParser) -> None:
    """The seed script's own flags, mapped onto TrainConfig by `apply_seed_script_keys`."""
    group = parser.add_argument_group("seed script flags (full_imagenet_train.py)")
    group.add_argument(
        "--data-dir",
        "--data_dir",
        dest="data_dir",
        metavar="DIR",
        help="same as --data; with any seed script flag and no --name, --out is the run folder itself",
    )
    group.add_argument("--depth", type=int, choices=(50, 101, 152), help="ResNet depth: --model sd_resnet<depth>")
    group.add_argument(
        "--sd",
        type=int,
        choices=(0, 1),
        help="stochastic depth on (1) or off (0; the default with --depth, as in the seed script)",
    )


def apply_seed_script_keys(values: dict[str, Any]) -> dict[str, Any]:
    """Turn data_dir / depth / sd into data / model / pL, refusing contradictions. A run given in
    the seed's spellings without --name is written where the seed script writes it: --out
    (default ./results_imagenet) is the run folder itself, not the folder of runs."""
    values = dict(values)
    data_dir, depth, sd = (values.pop(key, None) for key in SEED_SCRIPT_KEYS)
    if data_dir is not None:
        if values.get("data") not in (None, data_dir):
            raise ConfigError(f"--data-dir {data_dir} and --data {values['data']} differ; give one of them")
        values["data"] = data_dir
    if depth is not None:
        model = f"sd_resnet{depth}"
        if values.get("model") not in (None, model):
            raise ConfigError(f"--depth {depth} means --model {model}, but --model {values['model']} was given")
        values["model"] = model
    if sd == 0 or (sd is None and depth is not None):
        values["pL"] = 1.0
    seed_spelling = any(value is not None for value in (data_dir, depth, sd))
    if seed_spelling and values.get("name") is None:
        values["out"], values["name"] = split_run_folder(values.get("out") or SEED_OUT)
    return values


def split_run_folder(run_folder: str) -> tuple[str, str]:
    """(storage path, run name) whose join is `run_folder`, a local path or a URI."""
    text = str(run_folder).rstrip("/")
    if "://" in text:
        parent, _, name = text.rpartition("/")
        if parent.endswith(":/"):
            raise ConfigError(
                f"--out {run_folder}: with the seed script's flags --out is the run folder itself; "
                f"give a folder inside the bucket, e.g. {text}/results_imagenet"
            )
        return parent, name
    path = Path(text).expanduser().resolve()
    if path == path.parent:
        raise ConfigError(f"--out {run_folder}: the run folder cannot be the filesystem root; name a folder")
    return str(path.parent), path.name


def with_keras_aliases(table: pd.DataFrame) -> pd.DataFrame:
    """A copy with the seed script's Keras column names added after the raymc ones."""
    aliased = table.copy()
    for alias, key in KERAS_ALIASES.items():
        if key in table and alias not in table:
            aliased[alias] = table[key]
    return aliased
