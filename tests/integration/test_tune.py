"""A real search on the tiny demo set: Optuna + ASHA over 1-worker Ray Train trials, interrupted
by killing the driver and finished with --resume. One experiment serves every test here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from raymc.results import load
from raymc.results import main as results_main
from raymc.tune.cli import main
from raymc.tune.search import load_searcher
from tests.integration.registered import registered_history

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]  # one experiment: 4 trials, killed, resumed

# val_loss is continuous, so ASHA's rung cutoffs never tie; lr up to 3 makes some trials clearly bad.
SPACE = """
from ray import tune
SPACE = {"lr": tune.loguniform(1e-3, 3.0), "fusion": tune.choice(["concat", "gated"])}
"""
NUM_SAMPLES = 4  # with seed 0, the third is stopped by ASHA and the fourth runs after it
EPOCHS = 2
TINY = [
    "--image-size",
    "32",
    "--batch",
    "16",
    "--epochs",
    str(EPOCHS),
    "--warmup-epochs",
    "0.5",
    "--label-smoothing",
    "0",
]


def trial_statuses(experiment: Path) -> dict[str, str]:
    """Trial id -> status in Tune's newest saved experiment state (what a resume starts from)."""
    files = sorted(experiment.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        state = json.loads(files[-1].read_text())
    except json.JSONDecodeError:  # caught mid-write
        return {}
    trials = (json.loads(trial) for trial, _ in state["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def interruptible(statuses: dict[str, str], experiment: Path) -> bool:
    """A finished trial, and a running one with a checkpoint: the state worth interrupting."""
    running = [t for t, s in statuses.items() if s == "RUNNING" and registered_history(experiment / "trials" / t)]
    return "TERMINATED" in statuses.values() and bool(running)


@pytest.fixture(scope="module")
def experiment(tiny_nyu, tmp_path_factory, ray_session):
    """Start `python -m raymc.tune`, kill it mid-search, then finish it with --resume."""
    out = tmp_path_factory.mktemp("tune")
    space = out / "tiny_space.py"
    space.write_text(SPACE)
    argv = [
        "--space",
        str(space),
        "--data",
        tiny_nyu,
        "--out",
        str(out),
        "--name",
        "exp",
        "--seed",
        "0",
        "--num-samples",
        str(NUM_SAMPLES),
        "--metric",
        "val_loss",
        "--max-concurrent-trials",
        "1",
        *TINY,
    ]
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "TUNE_GLOBAL_CHECKPOINT_S": "1",  # save the experiment state every second, so the kill finds it current
    }
    driver = subprocess.Popen(
        [sys.executable, "-m", "raymc.tune", *argv],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    path = out / "exp"
    try:
        deadline = time.monotonic() + 600
        while not interruptible(trial_statuses(path), path) and time.monotonic() < deadline:
            assert driver.poll() is None, "the search ended before it could be interrupted"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = trial_statuses(path)
    assert interruptible(before, path), f"no finished and running trials to interrupt within 600 s: {before}"
    finished = {t: (path / t / "result.json").read_text() for t, s in before.items() if s == "TERMINATED"}
    running = {t: registered_history(path / "trials" / t) for t, s in before.items() if s == "RUNNING"}

    assert main([*argv, "--resume"]) == 0
    return path, finished, running


def test_resume_does_not_rerun_finished_trials_and_continues_unfinished_ones(experiment):
    path, finished, running = experiment
    results = load(path)
    assert len(results.trials) == NUM_SAMPLES
    for trial_id, reported in finished.items():
        assert (path / trial_id / "result.json").read_text() == reported, f"{trial_id} ran again"
    for trial_id, done in running.items():
        if not done:
            continue
        history = results.epochs[results.epochs["trial_id"] == trial_id]
        assert history["epoch"].tolist() == list(range(1, len(history) + 1))  # every epoch once
        run_history = json.loads((path / "trials" / trial_id / "history.json").read_text())
        assert run_history[: len(done)] == done  # the epochs before the kill were not trained again


def test_asha_stops_some_trials_and_optuna_sees_them_as_pruned(experiment):
    path, _, _ = experiment
    trials = load(path).trials.set_index("trial_id")
    pruned = trials[trials["status"] == "pruned"]
    assert len(pruned) >= 1 and (pruned["epochs_run"] < EPOCHS).all()
    assert (trials.loc[trials["status"] == "completed", "epochs_run"] == EPOCHS).all()
    states = load_searcher(str(path)).trial_states()
    expected = {"pruned": "PRUNED", "diverged": "PRUNED", "completed": "COMPLETE"}
    assert states == {t: expected[s] for t, s in trials["status"].items()}


def test_experiment_folder_holds_tables_best_config_and_plots(experiment):
    path, _, _ = experiment
    for name in ("results.csv", "results.parquet", "trials.parquet", "best_config.json", "search.json"):
        assert (path / name).is_file(), name
    results = load(path)
    for column in (
        "trial_id",
        "status",
        "epochs_run",
        "best_val_loss",
        "best_epoch",
        "final_val_loss",
        "config/lr",
        "config/fusion",
        "run_dir",
        "best_model",
        "val_acc",
        "time_total_s",
    ):
        assert column in results.trials, column
    assert pd.read_csv(path / "results.csv")["trial_id"].tolist() == results.trials["trial_id"].tolist()
    for column in (
        "trial_id",
        "epoch",
        "train_loss",
        "val_loss",
        "val_acc",
        "val_mean_class_acc",
        "lr",
        "time_total_s",
    ):
        assert column in results.epochs, column
    assert results.trials["epochs_run"].sum() == len(results.epochs)  # every epoch of every trial, once

    best = json.loads((path / "best_config.json").read_text())
    assert best["metric"] == "val_loss" and best["mode"] == "min"
    assert best["value"] == results.trials["best_val_loss"].min()
    assert set(best["config"]) == {"lr", "fusion"} and best["train_config"]["lr"] == best["config"]["lr"]
    assert Path(best["best_model"]).is_file()
    for run_dir in results.trials["run_dir"]:  # stopped trials are published too
        for name in ("history.csv", "summary.json", "best_model.pt"):
            assert (Path(run_dir) / name).is_file(), f"{run_dir}/{name}"
    assert sorted(p.name for p in (path / "plots").iterdir()) == [
        "val_loss_by_epoch.png",
        "val_loss_vs_hyperparameters.png",
    ]


def test_results_cli_prints_the_best_trials_and_reads_run_folders_too(experiment, capsys):
    path, _, _ = experiment
    (path / "plots" / "val_loss_by_epoch.png").unlink()
    assert results_main([str(path)]) == 0
    printed = capsys.readouterr().out
    best = json.loads((path / "best_config.json").read_text())
    assert best["trial_id"] in printed and "pruned" in printed
    assert (path / "plots" / "val_loss_by_epoch.png").is_file()

    run = load(best["run_dir"])  # one trial's run folder reads the same way
    assert run.kind == "run" and run.epochs["epoch"].tolist() == list(range(1, len(run.epochs) + 1))
    assert results_main([best["run_dir"], "--no-plots"]) == 0


def test_trials_stopped_by_asha_leave_no_cpu_reserved(experiment, ray_session):
    """A stopped trial's Train workers' placement group is removed, so later runs get every CPU."""
    deadline = time.monotonic() + 60
    while ray_session.available_resources().get("CPU", 0) < ray_session.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, f"CPUs still reserved: {ray_session.available_resources()}"
        time.sleep(0.5)
