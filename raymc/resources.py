"""How many Ray Train workers a run gets, with how many CPUs and GPUs each, and how many runs
(Tune trials) fit side by side: one rule for `raymc.train` and `raymc.tune`.

GPUs: one per worker by default, and as many trials as the GPUs hold. CPUs: half the cluster's
CPUs stay with Ray Data, because workers that take every CPU starve ingest and hang it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import ray

from raymc.config import TrainConfig
from raymc.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_CPU_WORKERS = 2  # a training run's workers on a cluster without GPUs
# Nodes with this label (cluster.yaml's cpu_data type) run raymc's Ray Data work when any is up.
DATA_POOL_LABEL = "raymc-pool"
DATA_POOL = "data"


def data_pool_nodes() -> int:
    """Alive nodes of the CPU-only data pool (label raymc-pool=data)."""
    return sum(1 for node in ray.nodes() if node["Alive"] and node.get("Labels", {}).get(DATA_POOL_LABEL) == DATA_POOL)


def data_task_options() -> dict[str, dict[str, str]]:
    """Ray remote arguments for raymc's Ray Data reads and views: on the data pool when one is up
    as the data set is built, so decoding and augmentation leave the training nodes' CPUs alone;
    anywhere otherwise. Reads and views must get the same arguments, or Ray Data stops fusing
    them into one task (and full-size pixels would cross the object store)."""
    return {"label_selector": {DATA_POOL_LABEL: DATA_POOL}} if data_pool_nodes() else {}


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


def check_batch_splits(config: TrainConfig, num_workers: int) -> None:
    """--batch is the global batch: each worker takes an equal share, and the learning rate is
    scaled for the whole of it, so it must divide by the workers (of a run, or of a trial)."""
    if config.batch % num_workers:
        raise ConfigError(
            f"--batch {config.batch} does not split evenly across {num_workers} workers: "
            f"use a multiple of {num_workers} (or set --num-workers)"
        )


def check_placement(
    config: TrainConfig, resources: WorkerResources, cluster: Mapping[str, float], *, connected: bool, what: str
) -> None:
    """Refuse at once what can never start; on a connected cluster, say what a run waits for.

    A local Ray that raymc started can never grow, so a run (`what`: "the run", "each trial") that
    needs more than it has is refused. A cluster raymc connected to (RAY_ADDRESS) may autoscale:
    the run is told what it waits for, then waits.
    """
    if resources.gpus % 1 and resources.num_workers > 1:
        raise ConfigError(
            f"--gpus-per-worker {resources.gpus:g} with {resources.num_workers} workers: NCCL needs a whole GPU "
            f"for each worker; use --gpus-per-worker 1 (or a single worker)"
        )
    needs = {"GPU": resources.gpus * resources.num_workers, "CPU": resources.cpus * resources.num_workers}
    short = {kind: need for kind, need in needs.items() if need > cluster.get(kind, 0) + 1e-9}
    if connected and config.gpus_per_worker is None and not resources.gpus:
        logger.warning(
            "the cluster has no GPUs right now, so %s trains on CPUs; on an autoscaling cluster pass "
            "--gpus-per-worker 1 (and --num-workers, --max-concurrent-trials) to have GPU nodes started",
            what,
        )
    if not short:
        return
    asked = ", ".join(f"{need:g} {kind}" for kind, need in needs.items() if need)
    workers = f"{resources.num_workers} worker{'s' if resources.num_workers != 1 else ''}"
    has = ", ".join(f"{cluster.get(kind, 0):g} {kind}" for kind in needs)
    sizing = "--num-workers, --gpus-per-worker or --cpus-per-worker"
    if not connected:
        raise ConfigError(
            f"{what} needs {asked} ({workers}), but the local Ray has {has} and cannot "
            f"grow; lower {sizing}, or submit to a cluster (RAY_ADDRESS)"
        )
    logger.warning(
        "%s needs %s (%s) and the cluster has %s now: waiting for the autoscaler to add nodes "
        "(on a fixed-size cluster this never happens: stop and lower %s)",
        what,
        asked,
        workers,
        has,
        sizing,
    )


def worker_resources(config: TrainConfig, *, connected: bool = False) -> WorkerResources:
    """A training run's workers on the cluster Ray is connected to; --batch must split evenly across them."""
    cluster = ray.cluster_resources()
    _, resources = plan_resources(config, cluster)
    check_batch_splits(config, resources.num_workers)
    check_placement(config, resources, cluster, connected=connected, what="the run")
    return resources


def plan_trials(
    config: TrainConfig, cluster: Mapping[str, float], max_concurrent: int | None, *, connected: bool = False
) -> tuple[int, WorkerResources]:
    """A search's trials at once (--max-concurrent-trials, or what the cluster holds) and each
    trial's workers (one unless --workers-per-trial says otherwise)."""
    one_worker = dataclasses.replace(config, num_workers=config.num_workers or 1)
    trials, resources = plan_resources(one_worker, cluster, trials=max_concurrent)
    check_batch_splits(one_worker, resources.num_workers)
    check_placement(one_worker, resources, cluster, connected=connected, what="each trial")
    if connected and max_concurrent is None:
        logger.warning(
            "%d trial(s) at a time, planned from what the cluster has now; on an autoscaling cluster pass "
            "--max-concurrent-trials N to run N at once as nodes start",
            trials,
        )
    return trials, resources
