"""How many Ray Train workers a run gets, with how many CPUs and GPUs each, and how many runs
(Tune trials) fit side by side: one rule for `raymc.train` and `raymc.tune`.

GPUs: one per worker by default, and as many trials as the GPUs hold. CPUs: half the cluster's
CPUs stay with Ray Data, because workers that take every CPU starve ingest and hang it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import ray

from raymc.config import TrainConfig
from raymc.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_CPU_WORKERS = 2  # a training run's workers on a cluster without GPUs


@dataclass(frozen=True)
class WorkerResources:
    num_workers: int
    cpus: float
    gpus: float

    @property
    def torch_threads(self) -> int:
        return max(1, math.floor(self.cpus))


def plan_resources(
    config: TrainConfig, cluster: Mapping[str, float], *, trials: int | None = 1
) -> tuple[int, WorkerResources]:
    """(runs at once, each worker's resources) on a cluster of `cluster` resources.

    trials=None fills the cluster: GPUs / GPUs per run, or on CPUs half the CPUs / CPUs per run
    (on 2 CPUs one trial at a time, which measured faster than two half-CPU trials side by side).
    Unset --num-workers means one worker per GPU on a GPU cluster, else DEFAULT_CPU_WORKERS.
    """
    cluster_gpus, cluster_cpus = cluster.get("GPU", 0), cluster.get("CPU", 1)
    gpus = config.gpus_per_worker if config.gpus_per_worker is not None else (1.0 if cluster_gpus >= 1 else 0.0)
    workers = config.num_workers or (max(1, int(cluster_gpus // gpus)) if gpus else DEFAULT_CPU_WORKERS)
    if trials is None:
        if gpus > 0:
            trials = math.floor(cluster_gpus / (workers * gpus))
        else:
            trials = math.floor(cluster_cpus / 2 / (workers * (config.cpus_per_worker or 1)))
        trials = max(1, trials)
    cpus = config.cpus_per_worker
    if cpus is None:
        share = cluster_cpus / 2 / (trials * workers)
        cpus = math.floor(share) if share >= 1 else share
    return trials, WorkerResources(workers, cpus, gpus)


def worker_resources(config: TrainConfig) -> WorkerResources:
    """A training run's workers on the connected cluster; --batch must split evenly across them."""
    cluster = ray.cluster_resources()
    if config.gpus_per_worker is None and cluster.get("GPU", 0) < 1 and os.environ.get("RAY_ADDRESS"):
        logger.warning(
            "the cluster has no GPUs right now, so training runs on CPUs; on an autoscaling cluster "
            "pass --gpus-per-worker 1 (and --num-workers) to have GPU nodes started"
        )
    _, resources = plan_resources(config, cluster)
    if config.batch % resources.num_workers:
        raise ConfigError(
            f"--batch {config.batch} does not split evenly across {resources.num_workers} workers: "
            f"use a multiple of {resources.num_workers} (or set --num-workers)"
        )
    return resources


def plan_trials(
    config: TrainConfig, cluster: Mapping[str, float], max_concurrent: int | None
) -> tuple[int, WorkerResources]:
    """A search's trials at once (--max-concurrent-trials, or what the cluster holds) and each
    trial's workers (one unless --workers-per-trial says otherwise)."""
    one_worker = dataclasses.replace(config, num_workers=config.num_workers or 1)
    return plan_resources(one_worker, cluster, trials=max_concurrent)
