"""One Ray session shared by every test that needs Ray; stopped even when tests fail."""

from __future__ import annotations

import raymc  # noqa: F401  (sets the 127.0.0.1 binding before ray is imported)

import pytest
import ray


@pytest.fixture(scope="session")
def ray_session():
    """A local 2-CPU Ray instance bound to 127.0.0.1 (dashboard on a free port, for the state API),
    shut down at the end of the session."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=0)
    try:
        yield ray
    finally:
        ray.shutdown()
