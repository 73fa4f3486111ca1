"""raymc.results without Ray: an experiment's tables round-trip through its folder, the top
table sorts by the searched metric, plots are drawn, and a run folder reads as one trial."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from raymc.errors import DataError
from raymc.outputs import write_run_outputs
from raymc.results import Results, _metric_summary, load, main, write_experiment


def experiment(path) -> Results:
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c"],
            "status": ["completed", "pruned", "completed"],
            "epochs_run": [2, 1, 2],
            "best_val_acc": [0.5, 0.2, 0.7],
            "best_epoch": [2, 1, 2],
            "final_val_acc": [0.5, 0.2, 0.7],
            "config/lr": [0.01, 1.0, 0.1],
            "config/fusion": ["concat", "gated", "gated"],
        }
    )
    epochs = pd.DataFrame(
        {
            "trial_id": ["a", "a", "b", "c", "c"],
            "epoch": [1, 2, 1, 1, 2],
            "val_acc": [0.3, 0.5, 0.2, 0.4, 0.7],
            "timestamp": [1, 2, 3, 4, 5],
        }
    )
    best = {
        "metric": "val_acc",
        "mode": "max",
        "trial_id": "c",
        "value": 0.7,
        "epoch": 2,
        "config": {"lr": 0.1, "fusion": "gated"},
    }
    return Results(path=str(path), kind="experiment", trials=trials, epochs=epochs, best_config=best)


def test_an_experiment_round_trips_through_its_folder_with_plots(tmp_path):
    written = write_experiment(experiment(tmp_path))
    assert {"results.csv", "results.parquet", "trials.parquet", "best_config.json"} <= set(written)
    loaded = load(tmp_path)
    pd.testing.assert_frame_equal(loaded.trials, experiment(tmp_path).trials)
    pd.testing.assert_frame_equal(loaded.epochs, experiment(tmp_path).epochs)
    assert loaded.best_config["trial_id"] == "c" and loaded.params == ["lr", "fusion"]
    assert (tmp_path / "plots" / "val_acc_by_epoch.png").stat().st_size > 0
    assert (tmp_path / "plots" / "val_acc_vs_hyperparameters.png").stat().st_size > 0


def test_top_sorts_by_the_best_metric_in_the_searched_direction(tmp_path):
    results = experiment(tmp_path)
    assert results.top(2)["trial_id"].tolist() == ["c", "a"]
    results.best_config["mode"] = "min"
    assert results.top(1)["trial_id"].tolist() == ["b"]
    assert list(results.top().columns[-2:]) == ["lr", "fusion"]


def test_a_run_folder_reads_as_one_trial_with_its_history(tmp_path, capsys):
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.5 / e, "val_acc": 0.2 * e, "lr": 0.1} for e in (1, 2, 3)
    ]
    summary = {
        "model": "mc_resnet18",
        "dataset": "nyu",
        "monitor": "val_acc",
        "epochs_run": 3,
        "epochs": 3,
        "stopped_early": False,
        "best_epoch": 3,
        "best_val_acc": 0.6,
        "final_metrics": history[-1],
    }
    run_dir = tmp_path / "run"
    write_run_outputs(run_dir, history=history, summary=summary, classes=["a", "b"], confusion=None, pathways=None)
    (run_dir / "config.json").write_text(json.dumps({"config": {"lr": 0.1}}))
    run = load(run_dir)
    assert run.kind == "run" and run.epochs["epoch"].tolist() == [1, 2, 3]
    assert run.best_config["value"] == 0.6 and run.best_config["train_config"] == {"lr": 0.1}
    assert main([str(run_dir)]) == 0
    assert "best val_acc 0.6000 at epoch 3" in capsys.readouterr().out


def test_a_folder_that_is_neither_is_refused_naming_it(tmp_path, capsys):
    with pytest.raises(DataError, match="neither an experiment folder"):
        load(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_a_trial_whose_every_epoch_diverged_has_no_best_epoch():
    """A trial whose only epochs gave NaN or inf (its run diverged) is summarized, not a crash of the
    experiment's tables (pandas' idxmin raises on all-NA values)."""
    history = pd.DataFrame({"epoch": [1, 2], "val_loss": [float("nan"), float("inf")]})
    summary = _metric_summary(history, "val_loss", "min")
    assert summary["best_val_loss"] is None and summary["best_epoch"] is None
    mixed = pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [float("inf"), 0.5, float("nan")]})
    assert _metric_summary(mixed, "val_loss", "min")["best_epoch"] == 2
