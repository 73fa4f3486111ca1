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


@pytest.fixture(scope="session", autouse=True)
def aws_test_credentials():
    """Dummy AWS credentials and region for the whole session. Autouse, so they are set before any
    test starts Ray: its workers then hold them as a cluster node holds its own (raymc hands Ray
    tasks only the endpoint), and no test can reach a real account with a developer's keys."""
    from tests.s3_server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY

    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
        env.setenv("AWS_DEFAULT_REGION", TEST_REGION)
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def s3_server(aws_test_credentials):
    """A real S3-compatible server (moto) on 127.0.0.1 for the session, reached through
    AWS_ENDPOINT_URL, which is set for the test process only while it runs; stopped at the end even
    when tests fail. Ray workers started before it lack the endpoint: raymc passes it to its tasks."""
    from tests.s3_server import running_moto

    with running_moto() as server, pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        yield server
