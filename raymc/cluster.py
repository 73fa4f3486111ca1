"""Connecting to a Ray cluster, or starting a private local one bound to 127.0.0.1."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import ray

from raymc import quiet, storage
from raymc.errors import ConfigError

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
GCS_PORT_VARIABLE = "RAY_GCS_SERVER_PORT"  # read by Ray when it starts a head node's GCS


def connected_to_cluster() -> bool:
    """Whether raymc runs on a cluster it connected to (RAY_ADDRESS, as under `ray job submit`),
    which may autoscale, rather than on a local Ray it started, which can never grow."""
    return bool(os.environ.get("RAY_ADDRESS"))


def alive_nodes() -> int:
    """Nodes of the connected Ray that are alive now."""
    return sum(1 for node in ray.nodes() if node["Alive"])


def check_shared_paths(locations: dict[str, str], *, shared_fs: bool, nodes: int) -> None:
    """Refuse local paths on a cluster of several nodes: Ray tasks and workers on other nodes would
    read or write them on their own disks (and fail there with pyarrow's or h5py's errors).

    `locations` maps each flag (or what names the path) to its value; URIs always pass, and so does
    everything when the user says the paths are mounted on every node (--shared-fs).
    """
    if shared_fs or nodes <= 1:
        return
    for flag, location in locations.items():
        if not storage.is_uri(location):
            raise ConfigError(
                f"{flag} {location} is a local path, but this Ray cluster has {nodes} nodes, whose tasks "
                f"would each use their own disk; use an s3:// or gs:// URI, or pass --shared-fs if the path "
                f"is mounted at the same place on every node"
            )


def init_ray(*, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to the cluster in RAY_ADDRESS (as under `ray job submit`), else start a local Ray.

    A running cluster owns its resources, so num_cpus and num_gpus only shape a local instance.
    """
    if ray.is_initialized():
        return
    if connected_to_cluster():
        ray.init(logging_level=logging.WARNING)
        logger.info("connected to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        return
    started = start_local_ray(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True)
    resources = ray.cluster_resources()
    logger.info(
        "started a local Ray on %s (%g CPUs, %g GPUs); dashboard http://%s, Ray's logs in %s/logs",
        LOOPBACK,
        resources.get("CPU", 0),
        resources.get("GPU", 0),
        started.dashboard_url,
        started.address_info["session_dir"],
    )


def start_local_ray(**init_kwargs: Any) -> ray.client_builder.BaseContext:
    """Start a Ray of this machine only, whose every process knows its own GCS address.

    Ray's processes find their cluster, when an API is called without an address (the State API
    in Ray Train's PlacementGroupCleaner, `ray.util.state.list_actors()`), from RAY_ADDRESS, else
    from /tmp/ray/ray_current_cluster (the last `ray start`, possibly long gone) or by scanning
    the machine's processes for a GCS (several Ray instances: "Connecting to latest cluster").
    A stale file or another instance sends them to a GCS that never answers ("Timed out while
    waiting for GCS to become available"). raymc therefore picks the GCS port itself and gives
    every process of the job RAY_ADDRESS: none of them searches. The driver's own environment is
    left alone, so subprocesses it starts (and connected_to_cluster) still see no cluster.
    """
    from raymc.ray_compat import bind_local_ray_to_loopback  # imports Ray Tune: only when starting Ray

    bind_local_ray_to_loopback()
    port = free_port()
    env_vars = {"RAY_ADDRESS": f"{LOOPBACK}:{port}", **quiet.LOCAL_RAY_ENV, **storage.worker_env()}
    with _environment({GCS_PORT_VARIABLE: str(port)}):
        return ray.init(
            address="local",
            logging_level=logging.WARNING,
            runtime_env={"env_vars": env_vars},
            **init_kwargs,
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set, for the processes started meanwhile; restored after."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
