"""Real 2-worker Ray Train runs on CPU: the run folder, resuming, and the same loop for every model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from raymc.config import build_config
from raymc.errors import ConfigError
from raymc.train import run_training

pytestmark = pytest.mark.integration

TINY = {"image_size": 32, "batch": 16, "epochs": 2, "num_workers": 2, "warmup_epochs": 0.5, "lr": 0.05}


def tiny_config(data: str, out, **overrides):
    return build_config({"data": data, "out": str(out), **TINY, **overrides})


def test_run_folder_holds_everything_a_user_reads(finished_run):
    config, result, _ = finished_run
    run_dir = Path(result.run_dir)
    for name in (
        "history.csv",
        "history.json",
        "summary.json",
        "best_model.pt",
        "pathways.json",
        "plots/training_curves.png",
        "plots/confusion_matrix.png",
        "plots/pathways.png",
        "training_history.csv",
        "training_summary.csv",
        "config.json",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    history = pd.read_csv(f"{run_dir}/history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    for column in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "val_acc5",
        "val_mean_class_acc",
        "lr",
        "epoch_time_s",
        "images_per_s",
        "val_acc_rgb_only",
        "val_acc_depth_only",
    ):
        assert history[column].notna().all(), column
    assert history["lr"].is_monotonic_decreasing  # cosine after a half-epoch warmup

    summary = json.loads(open(f"{run_dir}/summary.json").read())
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == int(history["val_acc"].idxmax()) + 1

    best = torch.load(f"{run_dir}/best_model.pt", weights_only=True)
    assert best["model"] == "mc_resnet18" and len(best["classes"]) == 10
    assert best["epoch"] == summary["best_epoch"]
    confusion = torch.tensor(best["confusion"])
    assert confusion.sum().item() == summary["num_val"]  # every validation row counted once
    pathways = json.loads(open(f"{run_dir}/pathways.json").read())
    assert set(pathways) == {"full", "rgb_only", "depth_only"}
    assert pathways["full"] == pytest.approx(history.loc[best["epoch"] - 1, "val_acc"])


def test_rerun_with_the_same_name_resumes_instead_of_retraining(finished_run):
    config, first, _ = finished_run
    again = run_training(config)
    assert again.history == first.history  # identical epochs, timings included: nothing retrained
    assert again.summary == first.summary  # its wall time included: the run that trained is kept


def test_rerun_with_other_settings_under_the_same_name_is_refused(finished_run):
    config, _, _ = finished_run
    with pytest.raises(ConfigError, match="lr"):
        run_training(build_config({**config.to_dict(), "lr": 0.2}))


def test_live_training_metrics_reach_the_prometheus_export(finished_run):
    """While the run trained, its ray.util.metrics gauges were on the node's metrics export port."""
    _, _, pages = finished_run
    lines = [line for page in pages for line in page.splitlines() if 'run="tiny"' in line]
    for name in ("images_per_second", "loss", "learning_rate", "epoch", "data_wait_seconds"):
        values = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(f"ray_raymc_train_{name}{{")]
        assert values, f"ray_raymc_train_{name} was never exported"
        assert all(math.isfinite(v) for v in values)
    ranks = {line.split('rank="')[1].split('"')[0] for line in lines}
    assert ranks == {"0", "1"}  # every worker publishes its own series
