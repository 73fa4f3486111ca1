"""Worker placement defaults on the (2-CPU, no-GPU) test cluster."""

from __future__ import annotations

import logging
import time

import pytest

from raymc.cluster import check_shared_paths
from raymc.config import TrainConfig
from raymc.data.sources import shared_locations
from raymc.data.spec import DataSpec
from raymc.driver import check_batch_fits
from raymc.errors import ConfigError
from raymc.resources import check_placement, plan_resources, plan_trials, worker_resources
from raymc.train import main as train_main
from tests.helpers import raymc_stderr


def test_cpu_cluster_defaults_leave_half_the_cpus_to_ray_data(ray_session):
    resources = worker_resources(TrainConfig(batch=32))
    assert (resources.num_workers, resources.gpus) == (2, 0.0)
    assert resources.cpus == pytest.approx(0.5) and resources.torch_threads == 1


def test_explicit_settings_win(ray_session):
    resources = worker_resources(TrainConfig(batch=30, num_workers=3, cpus_per_worker=0.25))
    assert (resources.num_workers, resources.cpus) == (3, 0.25)


def test_global_batch_must_split_evenly(ray_session):
    with pytest.raises(ConfigError, match="--batch 33 does not split evenly across 2 workers"):
        worker_resources(TrainConfig(batch=33))


# ---------------------------------------------------------------- issue 15: what a cluster can hold

CPU_CLUSTER = {"CPU": 16}
GPU_CLUSTER = {"CPU": 64, "GPU": 8}


def test_a_search_refuses_a_batch_that_does_not_split_over_the_workers_of_a_trial():
    config = TrainConfig(batch=256, num_workers=3)
    with pytest.raises(ConfigError, match="--batch 256 does not split evenly across 3 workers"):
        plan_trials(config, CPU_CLUSTER, None)


@pytest.mark.parametrize("plan", ["train", "tune"])
def test_a_fraction_of_a_gpu_for_each_of_several_workers_is_refused(plan):
    config = TrainConfig(batch=32, num_workers=2, gpus_per_worker=0.5)
    with pytest.raises(ConfigError, match="--gpus-per-worker 0.5 with 2 workers: NCCL needs a whole GPU"):
        if plan == "tune":
            plan_trials(config, GPU_CLUSTER, None)
        else:
            check_placement(config, plan_resources(config, GPU_CLUSTER)[1], GPU_CLUSTER, connected=True, what="the run")


def test_a_local_ray_that_cannot_hold_the_run_refuses_at_once(ray_session):
    started = time.monotonic()
    with pytest.raises(
        ConfigError,
        match=r"the run needs 1 GPU, 1 CPU \(1 worker\), but the local Ray has 0 GPU, 2 CPU and cannot grow",
    ):
        worker_resources(TrainConfig(batch=32, num_workers=1, gpus_per_worker=1))
    assert time.monotonic() - started < 5


def test_a_cli_run_that_a_local_ray_cannot_hold_exits_2_naming_the_flags(ray_session, capsys):
    assert train_main(["--gpus-per-worker", "0.5", "--num-workers", "2", "--batch", "32"]) == 2
    err = raymc_stderr(capsys)
    assert err.startswith("error: --gpus-per-worker 0.5 with 2 workers") and err.count("\n") == 1


def test_a_connected_cluster_says_what_the_run_waits_for_and_waits(caplog):
    config = TrainConfig(batch=32, num_workers=4, gpus_per_worker=1)
    _, resources = plan_resources(config, CPU_CLUSTER)
    with caplog.at_level(logging.WARNING, logger="raymc.resources"):
        check_placement(config, resources, CPU_CLUSTER, connected=True, what="the run")
    assert "the run needs 4 GPU, 8 CPU (4 workers) and the cluster has 0 GPU, 16 CPU now" in caplog.text
    assert "waiting for the autoscaler" in caplog.text


def test_a_search_on_a_connected_cluster_without_gpus_says_how_to_size_it(caplog):
    with caplog.at_level(logging.WARNING, logger="raymc.resources"):
        trials, resources = plan_trials(TrainConfig(batch=32, num_workers=1), CPU_CLUSTER, None, connected=True)
    assert (trials, resources.gpus) == (8, 0.0)
    assert "no GPUs right now, so each trial trains on CPUs" in caplog.text
    assert "pass --max-concurrent-trials N" in caplog.text


def test_a_search_sized_by_the_user_on_a_local_ray_says_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="raymc.resources"):
        plan_trials(TrainConfig(batch=32, num_workers=1), CPU_CLUSTER, 2)
    assert caplog.text == ""


def test_an_epoch_of_very_few_steps_is_warned_about(caplog):
    spec = DataSpec(classes=("a", "b"), streams=(), num_train=795, num_val=654)
    with caplog.at_level(logging.WARNING, logger="raymc.driver"):
        check_batch_fits(TrainConfig(batch=512), spec, 8)
    assert "gives 1 step(s) per epoch on 795 training rows, 283 of them unused" in caplog.text


def test_the_demo_batch_is_not_warned_about(caplog):
    spec = DataSpec(classes=("a", "b"), streams=(), num_train=220, num_val=100)
    with caplog.at_level(logging.WARNING, logger="raymc.driver"):
        check_batch_fits(TrainConfig(batch=32), spec, 2)
    assert caplog.text == ""


# ---------------------------------------------------------------- local paths on several nodes


def test_local_paths_pass_on_one_node_and_with_shared_fs_and_uris_always():
    check_shared_paths({"--data": "/data/nyu"}, shared_fs=False, nodes=1)
    check_shared_paths({"--data": "/data/nyu"}, shared_fs=True, nodes=8)
    check_shared_paths({"--data": "s3://bkt/nyu", "--out": "gs://bkt/runs"}, shared_fs=False, nodes=8)


def test_a_local_path_on_several_nodes_is_refused_naming_the_flag():
    refused = r"^--out ./runs is a local path, but this Ray cluster has 3 nodes.*shared-fs"
    with pytest.raises(ConfigError, match=refused):
        check_shared_paths({"--data": "s3://bkt/nyu", "--out": "./runs"}, shared_fs=False, nodes=3)


def test_the_demo_data_and_a_mat_file_go_through_the_data_cache():
    assert set(shared_locations(TrainConfig())) == {"--out", "the data cache (RAYMC_CACHE)"}
    assert "the data cache (RAYMC_CACHE)" in shared_locations(TrainConfig(data="s3://b/nyu.mat"))
    assert set(shared_locations(TrainConfig(data="s3://b/prepared"))) == {"--out", "--data"}
    assert "--pretrained" in shared_locations(TrainConfig(data="s3://b/p", pretrained="runs/sd50"))
    assert "--pretrained" not in shared_locations(TrainConfig(data="s3://b/p", pretrained="imagenet"))
