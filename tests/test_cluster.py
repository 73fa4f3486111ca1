"""The local Ray that raymc starts: every process of it finds its own GCS, whatever else is on the machine."""

from __future__ import annotations

import os

import pytest
import ray
from ray._common.utils import get_ray_address_file
from ray.util.state import list_actors

from raymc.cluster import LOOPBACK, free_port


@ray.remote(num_cpus=0)
def state_api_without_an_address() -> tuple[str | None, list[str]]:
    """What Ray Train's PlacementGroupCleaner does in its actor: ask the State API, no address given."""
    alive = list_actors(filters=[("class_name", "=", "Marker"), ("state", "=", "ALIVE")], timeout=20)
    return os.environ.get("RAY_ADDRESS"), [actor.class_name for actor in alive]


@ray.remote(num_cpus=0)
class Marker:
    def ready(self) -> bool:
        return True


@pytest.fixture
def stale_ray_address_file():
    """/tmp/ray/ray_current_cluster naming a GCS that is gone, as a killed `ray start` leaves it."""
    path = get_ray_address_file(None)
    before = open(path).read() if os.path.exists(path) else None
    with open(path, "w") as file:
        file.write(f"{LOOPBACK}:{free_port()}")
    try:
        yield
    finally:
        if before is None:
            os.remove(path)
        else:
            with open(path, "w") as file:
                file.write(before)


def test_processes_of_raymcs_local_ray_reach_their_own_gcs_past_a_stale_address_file(
    ray_session, stale_ray_address_file
):
    marker = Marker.remote()
    ray.get(marker.ready.remote())
    address, actors = ray.get(state_api_without_an_address.remote())
    assert address == ray.get_runtime_context().gcs_address
    assert address.startswith(f"{LOOPBACK}:")  # bound to this machine only, though conftest imports ray first
    assert actors == ["Marker"]
    ray.kill(marker)


def test_the_driver_keeps_its_environment(ray_session):
    """Subprocesses the driver starts (and raymc's connected_to_cluster) still see no cluster."""
    assert "RAY_ADDRESS" not in os.environ
    assert "RAY_GCS_SERVER_PORT" not in os.environ
