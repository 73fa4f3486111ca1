"""Real failures on a real Ray: a killed training worker, and a diverging loss."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.util.state import list_actors

from raymc.config import build_config
from raymc.errors import RaymcError
from raymc.train import run_training
from tests.helpers import assert_same_training
from tests.integration.conftest import TINY_RUN
from tests.integration.registered import registered_epochs

pytestmark = pytest.mark.integration

TINY = {"image_size": 32, "batch": 16, "num_workers": 2, "warmup_epochs": 0.5, "lr": 0.05}


def kill_a_worker_after_a_checkpoint(run_dir: Path, *, after_epochs: int) -> threading.Thread:
    """In the background: once the run has registered `after_epochs` checkpoints, SIGKILL one
    Ray Train worker process in mid-epoch."""

    def kill() -> None:
        deadline = time.monotonic() + 300
        while registered_epochs(run_dir) < after_epochs and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # into the next epoch
        workers = list_actors(
            address=ray.get_runtime_context().gcs_address,  # this test's cluster, not another on the machine
            filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        )
        os.kill(workers[-1].pid, signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_killed_worker_fails_cleanly_then_recovers_with_max_failures_exactly(tiny_nyu, tmp_path, finished_run):
    """A killed worker stops a run; the same command run again (a resubmitted driver) resumes it,
    and with --max-failures a second kill only restarts the workers. Under --deterministic the
    result is the run that was never interrupted (the shared finished run, same settings)."""
    settings = {"data": tiny_nyu, "out": str(tmp_path), "name": "ft", **TINY_RUN}
    killer = kill_a_worker_after_a_checkpoint(tmp_path / "ft", after_epochs=1)
    with pytest.raises(RaymcError, match="failed.*checkpoints .* stay usable"):
        run_training(build_config(settings))
    killer.join()
    assert list((tmp_path / "ft").glob("checkpoint_epoch_*"))

    # Same run, now allowed one restart: it resumes from its checkpoint, survives another kill,
    # and ends with every epoch in its history exactly once.
    killer = kill_a_worker_after_a_checkpoint(tmp_path / "ft", after_epochs=2)
    result = run_training(build_config({**settings, "max_failures": 1}))
    killer.join()
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert_same_training(tmp_path / "ft", Path(finished_run[1].run_dir))


def test_diverging_loss_stops_the_run_with_a_clear_error(tiny_nyu, tmp_path):
    config = build_config({"data": tiny_nyu, "out": str(tmp_path), "epochs": 2, **TINY, "lr": 1e12, "warmup_epochs": 0})
    started = time.monotonic()
    with pytest.raises(RaymcError, match="diverg"):
        run_training(config)
    assert time.monotonic() - started < 120  # stopped at once, not after every epoch


@pytest.fixture(scope="module")
def node_losses(tmp_path_factory) -> tuple[list[int], str, Path]:
    """Run node_loss_run.py once (its own process: a driver joins one cluster at a time): one run
    that is preempted in epoch 2 and loses a node without notice in epoch 3, then its uninterrupted
    reference. Returns the epochs of its history, its log and the runs' folder."""
    script = Path(__file__).with_name("node_loss_run.py")
    workdir = tmp_path_factory.mktemp("node_loss")
    done = subprocess.run(
        [sys.executable, str(script), str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = json.loads(done.stdout.split("EPOCHS", 1)[1].strip().splitlines()[0])
    return epochs, done.stdout + done.stderr, workdir / "runs"


def test_preemption_notice_checkpoints_mid_epoch_before_the_node_goes(node_losses):
    epochs, log, _ = node_losses
    assert "PREEMPTED" in log
    assert "a node is about to be preempted: checkpointing after" in log
    assert re.search(r"resumed from the checkpoint of epoch 1 \(\+[1-9]\d* steps\)", log)
    assert epochs == [1, 2, 3]


def test_a_deterministic_run_preempted_mid_epoch_and_losing_a_node_equals_the_uninterrupted_one(node_losses):
    _, _, runs = node_losses
    assert_same_training(runs / "node-loss", runs / "reference")


def test_local_paths_on_several_nodes_are_refused_without_shared_fs(node_losses):
    _, log, _ = node_losses
    assert re.search(r"REFUSED --out \S+ is a local path, but this Ray cluster has 4 nodes.*--shared-fs", log)


def test_evaluation_on_several_nodes_refuses_local_data_without_shared_fs(node_losses):
    _, log, _ = node_losses
    assert re.search(r"EVAL-REFUSED --data \S+ is a local path, but this Ray cluster has \d nodes.*--shared-fs", log)
    assert 0.0 <= json.loads(log.split("EVAL-SHARED", 1)[1].split()[0]) <= 1.0


def test_losing_a_node_mid_run_recovers_with_max_failures(node_losses):
    epochs, log, _ = node_losses
    assert "LOST" in log
    assert "resumed from the checkpoint of epoch 2 (+0 steps)" in log
    assert epochs == [1, 2, 3]  # every epoch once, across both failures
