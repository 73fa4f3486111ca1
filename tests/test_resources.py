"""Worker placement defaults on the (2-CPU, no-GPU) test cluster."""

from __future__ import annotations

import pytest

from raymc.config import TrainConfig
from raymc.errors import ConfigError
from raymc.resources import worker_resources


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
