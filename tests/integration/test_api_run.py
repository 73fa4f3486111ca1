"""The Python API on a real run: fit, then evaluate / predict / analyze_pathways by Ray Data batch inference.

One tiny training run is shared by the module; it also shows early stopping (no epoch can beat
epoch 1's val_loss by 1000, so the run stops after exactly `patience` more epochs). It runs with
--cache, where each epoch's data pass starts during the previous validation, so the stop also
closes a pass begun for an epoch that never runs. The CLIs run in-process on the session's Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import raymc
from raymc.evaluate import main as evaluate_main
from raymc.predict import main as predict_main

pytestmark = pytest.mark.integration

TINY = {"image_size": 32, "batch": 16, "epochs": 6, "num_workers": 2, "warmup_epochs": 0.5, "lr": 0.05, "cache": True}
EARLY_STOPPING = {"patience": 2, "monitor": "val_loss", "min_delta": 1000.0}


@pytest.fixture(scope="module")
def run(tiny_nyu, tmp_path_factory, ray_session) -> raymc.RunResult:
    out = tmp_path_factory.mktemp("api_runs")
    return raymc.fit({"data": tiny_nyu, "out": str(out), **TINY, **EARLY_STOPPING}, name="api", label_smoothing=0.1)


@pytest.fixture(scope="module")
def best(run) -> dict:
    return torch.load(run.best_checkpoint, weights_only=True)


@pytest.fixture(scope="module")
def evaluated(run, tiny_nyu, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    assert evaluate_main(["--checkpoint", run.run_dir, "--data", tiny_nyu, "--out", str(out)]) == 0
    return out


def test_fit_returns_what_the_cli_writes(run):
    run_dir = Path(run.run_dir)
    on_disk = pd.read_csv(run_dir / "history.csv")
    pd.testing.assert_frame_equal(run.history, on_disk)
    assert run.summary == json.loads((run_dir / "summary.json").read_text())
    assert run.best_checkpoint == str(run_dir / "best_model.pt") and Path(run.best_checkpoint).is_file()
    assert run.best_metrics == run.summary["best_metrics"]


def test_early_stopping_stops_after_patience_and_keeps_the_best_epoch(run, best):
    assert run.history["epoch"].tolist() == [1, 2, 3]
    assert run.summary["stopped_early"] and run.summary["best_epoch"] == 1
    assert best["epoch"] == 1 and best["metrics"]["val_loss"] == run.history.loc[0, "val_loss"]


def test_fitting_a_run_that_stopped_early_again_returns_it_without_training(run, tiny_nyu):
    again = raymc.fit(
        {"data": tiny_nyu, "out": str(Path(run.run_dir).parent), **TINY, **EARLY_STOPPING},
        name="api",
        label_smoothing=0.1,
    )
    pd.testing.assert_frame_equal(again.history, run.history)
    assert again.summary == run.summary


def test_evaluate_reproduces_the_best_epochs_validation(evaluated, best):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_samples"] == sum(map(sum, best["confusion"]))
    assert metrics["acc"] == pytest.approx(best["metrics"]["val_acc"], abs=1e-6)
    assert metrics["mean_class_acc"] == pytest.approx(best["metrics"]["val_mean_class_acc"], abs=1e-6)
    assert metrics["acc5"] == pytest.approx(best["metrics"]["val_acc5"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(best["metrics"]["val_loss"], rel=1e-5)
    assert metrics["confusion"] == best["confusion"]
    assert metrics["pathways"] == pytest.approx(best["pathways"], abs=1e-6)
    per_class = pd.read_csv(evaluated / "per_class.csv")
    assert per_class["class"].tolist() == best["classes"] and per_class["samples"].sum() == metrics["num_samples"]
    for plot in ("confusion_matrix", "predictions", "pathways"):
        assert (evaluated / "plots" / f"{plot}.png").stat().st_size > 0


def test_predict_writes_one_row_per_sample_with_probabilities(run, tiny_nyu, evaluated, tmp_path):
    out = tmp_path / "predictions.parquet"
    assert predict_main(["--checkpoint", run.best_checkpoint, "--data", tiny_nyu, "--out", str(out), "--probs"]) == 0
    table = pd.read_parquet(out)
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert len(table) == metrics["num_samples"] and table["index"].is_unique and table["index"].is_monotonic_increasing
    assert np.allclose([p.sum() for p in table["probs"]], 1.0, atol=1e-5)
    assert all(len(classes) == 5 for classes in table["top5_class"])
    assert table["correct"].mean() == pytest.approx(metrics["acc"], abs=1e-6)


def test_pathways_of_a_model_loaded_from_a_ray_checkpoint_folder(run, tiny_nyu, best):
    checkpoint = sorted(Path(run.run_dir).glob("checkpoint_epoch_*"))[-1]
    model = raymc.load_model(checkpoint)
    assert model.classes == best["classes"] and model.input_streams == ("rgb", "depth")
    assert raymc.analyze_pathways(model, tiny_nyu) == pytest.approx(best["pathways"], abs=1e-6)


def test_a_checkpoint_of_the_wrong_model_is_refused_before_any_work(tiny_nyu, tmp_path, best):
    from raymc.models import build_model
    from raymc.trained import CheckpointError

    sd = build_model("sd_resnet50", num_classes=len(best["classes"]))
    torch.save(
        {**best, "state_dict": sd.state_dict(), "model": "sd_resnet50", "model_kwargs": {"num_classes": 10}},
        tmp_path / "sd.pt",
    )
    with pytest.raises(CheckpointError, match="sd.pt holds sd_resnet50.*rgb \\+ depth"):
        raymc.predict(tmp_path / "sd.pt", tiny_nyu)
