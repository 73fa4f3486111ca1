"""Connecting to a Ray cluster, or starting a private local one bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def connected_to_cluster() -> bool:
    """Whether raymc runs on a cluster it connected to (RAY_ADDRESS, as under `ray job submit`),
    which may autoscale, rather than on a local Ray it started, which can never grow."""
    return bool(os.environ.get("RAY_ADDRESS"))


def init_ray(*, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to the cluster in RAY_ADDRESS (as under `ray job submit`), else start a local Ray.

    A running cluster owns its resources, so num_cpus and num_gpus only shape a local instance.
    """
    if ray.is_initialized():
        return
    if connected_to_cluster():
        ray.init()
        logger.info("connected to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        return
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True)
    logger.info("started a local Ray instance: %s", ray.cluster_resources())
