"""One Ray session shared by every test that needs Ray; stopped even when tests fail."""

from __future__ import annotations

import os

import pytest
import ray

import raymc  # noqa: F401  (sets the 127.0.0.1 binding before ray is imported)
from raymc.cluster import start_local_ray

# Ray Train's controller polls its workers every 2 s by default, so every run ends up to 2 s after
# its last epoch; tests run many tiny runs. Set before Ray starts, so its processes inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def ray_session():
    """A local 2-CPU Ray instance bound to 127.0.0.1 (dashboard on a free port, for the state API),
    shut down at the end of the session. Processes export their metrics every second (Ray's
    default is 10 s, longer than a tiny test run lives, and a gauge ages out 2 intervals after
    its process ends)."""
    if not ray.is_initialized():
        start_local_ray(
            num_cpus=2,
            include_dashboard=True,
            dashboard_port=0,
            _system_config={"metrics_report_interval_ms": 1000},
        )
    try:
        yield ray
    finally:
        ray.shutdown()
