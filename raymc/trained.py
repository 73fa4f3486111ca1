"""A trained model back from disk: find its best_model.pt, check it, rebuild the network.

`best_model.pt` (in a run folder or in each Ray checkpoint folder) is a plain dict read with
`torch.load(weights_only=True)`: it names the registered model and its build arguments, so the
network is rebuilt by `build_model` and never unpickled. The rebuilt model carries `classes`,
`input_streams` and `raymc_info` (a ModelInfo), which is all evaluation and prediction need.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from torch import nn

from raymc import storage
from raymc.checkpoint import BEST_MODEL_FILE
from raymc.config import SETTING_NAMES, TrainConfig
from raymc.errors import DataError, RaymcError
from raymc.models import build_model

__all__ = [
    "CheckpointError",
    "ModelInfo",
    "as_payload",
    "attach_info",
    "load_payload",
    "model_from_payload",
    "model_info",
]

REQUIRED_KEYS = ("state_dict", "model", "model_kwargs", "classes")
# What to pass instead, said by every error about a checkpoint path.
_EXPECTED = f"pass a run folder, a checkpoint_epoch_NNNN folder or a {BEST_MODEL_FILE} file written by raymc.train"


class CheckpointError(DataError):
    """A checkpoint that is missing, unreadable, or does not fit the model or data it is used with."""


@dataclass(frozen=True)
class ModelInfo:
    """What a trained model needs beside its weights: how to rebuild it and how to feed it."""

    name: str  # registry name, e.g. "mc_resnet18"
    kwargs: dict[str, Any]  # build_model arguments
    classes: tuple[str, ...]  # label i is classes[i]
    input_streams: tuple[str, ...]  # data columns forward() takes, in order: ("rgb", "depth") or ("rgb",)
    config: TrainConfig  # the settings it was trained with (image size, validation resize, protocol, ...)
    path: str  # the best_model.pt it came from ("" for a model built in memory)
    epoch: int | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


def _read_bytes(location: str) -> tuple[bytes, str]:
    """The bytes of best_model.pt at `location` (the file, or a folder holding it), and its path."""
    uri = storage.as_uri(location)
    try:
        filesystem, path = storage.filesystem(uri)
        kind = filesystem.get_file_info(path).type
        if kind == pyarrow.fs.FileType.Directory:
            path, uri = storage.join(path, BEST_MODEL_FILE), storage.join(uri, BEST_MODEL_FILE)
            if not storage.is_file(path, fs=filesystem):
                raise CheckpointError(f"{location}: this folder holds no {BEST_MODEL_FILE}; {_EXPECTED}")
        elif kind != pyarrow.fs.FileType.File:
            raise CheckpointError(f"{location}: no such checkpoint file or folder; {_EXPECTED}")
        return storage.read_bytes(path, fs=filesystem), uri
    except (OSError, pyarrow.ArrowException) as exc:
        raise CheckpointError(f"{location}: cannot read the checkpoint ({exc}); {_EXPECTED}") from None


def load_payload(location: str | Path) -> tuple[dict[str, Any], str]:
    """The checked contents of a best_model.pt (local path or URI) and the file's full path."""
    data, path = _read_bytes(str(location))
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for files that are not (safe) checkpoints
        raise CheckpointError(f"{path}: not a readable raymc checkpoint ({type(exc).__name__}); {_EXPECTED}") from None
    if not isinstance(payload, dict) or not payload:
        raise CheckpointError(
            f"{path}: holds no best weights (no epoch had finished when it was written); "
            f"use a later checkpoint or the run folder's {BEST_MODEL_FILE}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(
            f"{path}: not a raymc {BEST_MODEL_FILE} (no key {', '.join(map(repr, missing))}); {_EXPECTED}"
        )
    return payload, path


def _train_config(values: dict[str, Any] | None) -> TrainConfig:
    """The stored settings as a TrainConfig; keys this version does not know are left out."""
    return TrainConfig(**{k: v for k, v in (values or {}).items() if k in SETTING_NAMES})


def model_from_payload(payload: dict[str, Any], path: str = "") -> nn.Module:
    """Rebuild the registered network, load its weights strictly and attach its ModelInfo (eval mode)."""
    where = path or "the checkpoint"
    try:
        model = build_model(payload["model"], **payload["model_kwargs"])
    except RaymcError as exc:
        raise CheckpointError(f"{where}: cannot rebuild its model ({exc}); {_EXPECTED}") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{where}: its weights do not fit model {payload['model']} {payload['model_kwargs']} ({detail}); "
            f"the file is damaged or was edited: use the {BEST_MODEL_FILE} a raymc run wrote"
        ) from None
    info = ModelInfo(
        name=payload["model"],
        kwargs=dict(payload["model_kwargs"]),
        classes=tuple(payload["classes"]),
        input_streams=tuple(getattr(model, "stream_names", ("rgb",))),
        config=_train_config(payload.get("config")),
        path=path,
        epoch=payload.get("epoch"),
        metrics=dict(payload.get("metrics") or {}),
    )
    return attach_info(model.eval(), info)


def attach_info(model: nn.Module, info: ModelInfo) -> nn.Module:
    """Give the model its class names, input streams and full ModelInfo as attributes."""
    model.raymc_info = info
    model.classes = list(info.classes)
    model.input_streams = info.input_streams
    return model


def model_info(model: nn.Module) -> ModelInfo:
    """The ModelInfo of a model from `raymc.load_model`; a plain module has none to offer."""
    info = getattr(model, "raymc_info", None)
    if not isinstance(info, ModelInfo):
        raise CheckpointError(
            f"{type(model).__name__} has no raymc metadata (classes, settings); load it with "
            f"raymc.load_model(path) or pass the checkpoint path instead"
        )
    return info


def as_payload(model: nn.Module) -> dict[str, Any]:
    """A loaded model's current weights and build arguments, in best_model.pt's layout (CPU tensors)."""
    info = model_info(model)
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": info.name,
        "model_kwargs": info.kwargs,
        "classes": list(info.classes),
        "config": info.config.to_dict(),
        "epoch": info.epoch,
        "metrics": info.metrics,
    }
