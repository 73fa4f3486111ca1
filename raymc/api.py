"""The Python API: what the CLIs do, as functions returning Python objects.

    import raymc
    run = raymc.fit(epochs=8)                      # = python -m raymc.train --epochs 8
    model = raymc.load_model(run.best_checkpoint)  # nn.Module in eval mode, with model.classes
    metrics = raymc.evaluate(model)                # = python -m raymc.evaluate (held-out split)
    predictions = raymc.predict(model).to_pandas() # = python -m raymc.predict
    raymc.analyze_pathways(model)                  # {"full": ..., "rgb_only": ..., "depth_only": ...}

`fit` runs the training driver itself (`build_config` + `run_training`); evaluate, predict and
analyze_pathways run `raymc.inference` (Ray Data batch inference) and the CLIs call these
functions, so there is one implementation of each.
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import ray
from matplotlib.figure import Figure
from torch import nn

from raymc.checkpoint import BEST_MODEL_FILE
from raymc.config import SETTING_NAMES, TrainConfig, build_config
from raymc.data.pipeline import naming_damaged_shards
from raymc.errors import ConfigError
from raymc.figures import predictions_figure
from raymc.flags import flag_names
from raymc.inference import (
    CountBatches,
    InferenceData,
    PredictBatches,
    check_fits,
    count_totals,
    inference_data,
    metrics_from_counts,
    run_inference,
)
from raymc.outputs import history_frame
from raymc.seed_compat import SEED_SCRIPT_KEYS
from raymc.trained import as_payload, load_payload, model_from_payload, model_info

__all__ = [
    "RunResult",
    "analyze_pathways",
    "evaluate",
    "fit",
    "load_model",
    "open_data",
    "predict",
    "show_predictions",
    "train_config",
    "add_inference_arguments",
]

PathLike = str | os.PathLike
SPLITS = ("test", "val", "train")
PREVIEW_POOL = 8  # show_predictions spreads its n samples over the first PREVIEW_POOL * n rows


@dataclass
class RunResult:
    """A finished training run, as `python -m raymc.train` left it in `run_dir`."""

    run_dir: str
    history: pd.DataFrame  # history.csv: one row per epoch
    summary: dict[str, Any]  # summary.json
    best_checkpoint: str  # run_dir/best_model.pt
    best_metrics: dict[str, float]  # the best epoch's row of the history

    def load_model(self, device: str = "cpu") -> nn.Module:
        """The best epoch's model (see `raymc.load_model`)."""
        return load_model(self.best_checkpoint, device=device)


# ---------------------------------------------------------------- training


def _setting_names(values: Mapping[str, Any], given_as: str) -> dict[str, Any]:
    """Settings with dashes read as underscores; unknown names refused with the closest valid one."""
    known = SETTING_NAMES | set(SEED_SCRIPT_KEYS)
    named = {str(key).replace("-", "_"): value for key, value in values.items()}
    for name in named:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown setting {name!r} ({given_as}); {hint}settings are the fields of raymc.config.TrainConfig, "
                f"the flags of `python -m raymc.train --help`"
            )
    return named


def train_config(config: TrainConfig | Mapping[str, Any] | PathLike | None = None, **overrides: Any) -> TrainConfig:
    """The TrainConfig `fit` runs: a TrainConfig as it is, a dict of settings, or a YAML file
    (as `--config`), then keyword overrides on top; validated as the CLI validates flags."""
    values: Mapping[str, Any] = {}
    yaml_path = None
    if isinstance(config, TrainConfig):
        values = config.to_dict()
    elif isinstance(config, Mapping):
        values = _setting_names(config, "a key of the config dict")
    elif isinstance(config, (str, os.PathLike)):
        yaml_path = os.fspath(config)
    elif config is not None:
        raise ConfigError(f"config must be a TrainConfig, a dict or a YAML path, not {type(config).__name__}")
    return build_config(dict(values), yaml_path=yaml_path, overrides=_setting_names(overrides, "a keyword argument"))


def fit(config: TrainConfig | Mapping[str, Any] | PathLike | None = None, **overrides: Any) -> RunResult:
    """Train as `python -m raymc.train` does (same settings, same driver, same run folder).

    `raymc.fit()` trains the demo model; `raymc.fit("run.yaml", epochs=30)` a YAML file's settings
    with one changed. Running the same settings again resumes the run, as the CLI does.
    """
    from raymc.train import run_training  # the driver pulls in Ray Train; only fit needs it

    result = run_training(train_config(config, **overrides))
    return RunResult(
        run_dir=result.run_dir,
        history=history_frame(result.history),
        summary=result.summary,
        best_checkpoint=f"{result.run_dir.rstrip('/')}/{BEST_MODEL_FILE}",
        best_metrics=result.summary["best_metrics"],
    )


# ---------------------------------------------------------------- trained models


def load_model(path: PathLike | RunResult, device: str = "cpu") -> nn.Module:
    """A trained model in eval mode on `device`, from a best_model.pt, a Ray checkpoint folder or a
    run folder (local or URI). It carries `classes` (label i is classes[i]), `input_streams`
    (("rgb", "depth") or ("rgb",), the order forward() takes them) and `raymc_info` (a
    raymc.trained.ModelInfo: model name, settings it was trained with, best epoch and metrics)."""
    if isinstance(path, RunResult):
        path = path.best_checkpoint
    payload, full_path = load_payload(os.fspath(path))
    return model_from_payload(payload, full_path).to(device)


def _model(model_or_path: nn.Module | PathLike | RunResult) -> nn.Module:
    if isinstance(model_or_path, nn.Module):
        model_info(model_or_path)  # refuses a module without raymc metadata
        return model_or_path
    if isinstance(model_or_path, (str, os.PathLike, RunResult)):
        return load_model(model_or_path)
    raise TypeError(f"expected a model from raymc.load_model or a checkpoint path, not {type(model_or_path).__name__}")


def open_data(
    model_or_path: nn.Module | PathLike | RunResult,
    data: PathLike | None = None,
    split: str | None = None,
    *,
    shared_fs: bool = False,
) -> InferenceData:
    """`data` resolved, checked against the model and preprocessed as in validation, for passing
    to several calls below without resolving it again. data: a prepared folder, an NYU .mat file
    or an ImageFolder (default: the data the model was trained on); split: "test" or "val" (the
    held-out split, the default, whichever name the data uses) or "train". On a cluster of several
    nodes, local data needs shared_fs=True (mounted at the same place on every node)."""
    return _data(_model(model_or_path), data, split, shared_fs=shared_fs)


def _data(
    model: nn.Module, data: PathLike | InferenceData | None, split: str | None, *, shared_fs: bool = False
) -> InferenceData:
    if isinstance(data, InferenceData):
        if split is not None and split not in (data.split, "test", "val"):
            raise ConfigError(f"split={split!r}, but the data given was opened for its {data.split} split")
        check_fits(model_info(model), data.spec, data.name)
        return data
    return inference_data(model_info(model), None if data is None else os.fspath(data), split, shared_fs=shared_fs)


# ---------------------------------------------------------------- inference


def evaluate(
    model_or_path: nn.Module | PathLike | RunResult,
    data: PathLike | InferenceData | None = None,
    split: str | None = None,
    *,
    batch_size: int | None = None,
    shared_fs: bool = False,
) -> dict[str, Any]:
    """Loss, top-1 (acc), top-5 (acc5), mean class accuracy, per-class accuracy, confusion matrix
    (rows = true class) and pathway accuracies of a model on a split, by Ray Data batch inference.

    The split is preprocessed exactly as training validated it, so on the run's own data the
    best checkpoint reproduces the best epoch's val_acc and val_mean_class_acc. shared_fs: as in
    open_data.
    """
    model = _model(model_or_path)
    prepared = _data(model, data, split, shared_fs=shared_fs)
    counted = run_inference(CountBatches, as_payload(model), prepared, batch_size=batch_size)
    with naming_damaged_shards(prepared.source):
        totals = count_totals(counted, prepared.spec.num_classes)
    metrics = metrics_from_counts(totals, prepared.spec.classes)
    info = model_info(model)
    return {
        "model": info.name,
        "checkpoint": info.path,
        "data": prepared.name,
        "split": prepared.split,
        "classes": list(prepared.spec.classes),
        **metrics,
    }


def predict(
    model_or_path: nn.Module | PathLike | RunResult,
    data: PathLike | InferenceData | None = None,
    split: str | None = None,
    *,
    batch_size: int | None = None,
    probs: bool = False,
    shared_fs: bool = False,
) -> ray.data.Dataset:
    """One row per sample: index (its id in the data set), label and true_class, pred and
    pred_class, correct, and the top-5 as top5_label, top5_class, top5_prob (highest first);
    with probs=True also every class's probability. Lazy: `.to_pandas()`, `.write_parquet()`.
    shared_fs: as in open_data."""
    model = _model(model_or_path)
    prepared = _data(model, data, split, shared_fs=shared_fs)
    return run_inference(PredictBatches, as_payload(model), prepared, batch_size=batch_size, probs=probs)


def analyze_pathways(
    model_or_path: nn.Module | PathLike | RunResult,
    data: PathLike | InferenceData | None = None,
    split: str | None = None,
    *,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Top-1 accuracy through the model's real fusion with both streams ("full") and with one
    stream's features zeroed ("rgb_only", "depth_only"); a one-stream model has only "full"."""
    metrics = evaluate(model_or_path, data, split, batch_size=batch_size)
    return metrics["pathways"] or {"full": metrics["acc"]}


def show_predictions(
    model_or_path: nn.Module | PathLike | RunResult,
    data: PathLike | InferenceData | None = None,
    split: str | None = None,
    *,
    n: int = 16,
) -> Figure:
    """A grid of n samples spread over the split's first rows, as the model saw them (RGB, and depth beside it),
    titled with true and predicted class, mistakes in red; scored by the same code as `predict`."""
    model = _model(model_or_path)
    prepared = _data(model, data, split)
    first = prepared.rows.take_batch(PREVIEW_POOL * n, batch_format="numpy")
    pick = np.unique(np.linspace(0, len(first["label"]) - 1, n).round().astype(int))
    batch = {key: values[pick] for key, values in first.items()}
    predicted = PredictBatches(as_payload(model), prepared.spec)(batch)
    return predictions_figure(
        batch["rgb"],
        batch.get("depth"),
        predicted["true_class"],
        predicted["pred_class"],
        title=f"{model_info(model).name} on {prepared.name} ({prepared.split} split)",
    )


# ---------------------------------------------------------------- the inference CLIs


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --data, --split and --batch-size: shared with raymc.predict."""
    parser.add_argument(
        *flag_names("checkpoint"),
        required=True,
        metavar="PATH",
        help="best_model.pt, a Ray checkpoint folder (checkpoint_epoch_NNNN) or a run folder (local or URI)",
    )
    parser.add_argument(
        *flag_names("data"),
        metavar="PATH",
        help="prepared Parquet folder, NYU .mat file or ImageFolder (default: the data the model was trained on)",
    )
    parser.add_argument(
        *flag_names("split"),
        choices=SPLITS,
        help="test or val: the held-out split, whichever name the data uses (default); or train",
    )
    parser.add_argument(*flag_names("batch_size"), type=int, metavar="N", help="rows per model call (default: 64)")
    parser.add_argument(
        *flag_names("shared_fs"),
        action="store_true",
        help="a local --data (or the model's training data) is mounted at the same place on every node of "
        "the cluster; without it, a cluster of several nodes refuses local paths (use s3:// or gs://)",
    )
