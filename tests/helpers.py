"""Small helpers shared by tests."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from raymc.config import TrainConfig
from raymc.models import build_model, model_kwargs

# Ray forwards its own processes' log lines to the driver's stderr, e.g. "(pid=gcs_server) ...",
# "(raylet) ...", "(RayTrainWorker pid=...) ..." or "(MapWorker(MapBatches(f)) pid=...) ...", possibly
# coloured, at any time (also from an earlier test's workers); they are Ray's output, not the CLI's.
_RAY_FORWARDED_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\((raylet|gcs_server|[^\n]*?\bpid=)")


def without_ray_lines(text: str) -> str:
    """`text` (captured stdout or stderr) without the log lines Ray forwards from its processes and
    Ray Data's progress bars (tqdm, each redrawn after a carriage return)."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not _RAY_FORWARDED_LINE.match(line) and not line.startswith("\r"))


def raymc_stderr(capsys: pytest.CaptureFixture) -> str:
    """What the code under test wrote to stderr, Ray's forwarded lines aside."""
    return without_ray_lines(capsys.readouterr().err)


# What --deterministic promises to reproduce in every row of history.csv.
EXACT_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_mean_class_acc")


def assert_same_training(run_dir: Path, reference_dir: Path) -> None:
    """Two published runs trained the same: equal metrics in every epoch of history.csv, equal best
    weights, and equal final weights (the newest checkpoint's state.pt)."""
    history = pd.read_csv(run_dir / "history.csv")
    reference = pd.read_csv(reference_dir / "history.csv")
    assert history["epoch"].tolist() == reference["epoch"].tolist()
    for name in EXACT_METRICS:
        assert history[name].tolist() == reference[name].tolist(), name
    for weights in ("best_model.pt", "state.pt"):
        ours, theirs = _weights(run_dir, weights), _weights(reference_dir, weights)
        assert ours.keys() == theirs.keys()
        different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
        assert not different, f"{weights}: {different[:5]}"


def _weights(run_dir: Path, file: str) -> dict[str, torch.Tensor]:
    if file == "best_model.pt":
        return torch.load(run_dir / file, weights_only=True)["state_dict"]
    (newest,) = sorted(run_dir.glob("checkpoint_epoch_*"))[-1:]
    return torch.load(newest / file, weights_only=True)["model"]


CLASSES = ["bedroom", "kitchen", "office"]


def model_payload(name: str = "mc_resnet18", classes: list[str] = CLASSES, **config) -> dict:
    """A best_model.pt payload of an untrained model of `name` for `classes` (seeded)."""
    torch.manual_seed(0)
    kwargs = model_kwargs(TrainConfig(model=name, fusion="concat", dropout=0.0), len(classes))
    model = build_model(name, **kwargs)
    return {
        "state_dict": model.state_dict(),
        "model": name,
        "model_kwargs": kwargs,
        "classes": classes,
        "num_params": 0,
        "config": TrainConfig(**{"model": name, "dataset": "nyu", "image_size": 32, **config}).to_dict(),
        "epoch": 3,
        "metrics": {"val_acc": 0.5},
    }
