"""A real S3-compatible server for the tests: moto's server mode on 127.0.0.1, in its own process
(its in-process ThreadedMotoServer would share the test's GIL and its global IAM settings).

Reached through the real clients: pyarrow via AWS_ENDPOINT_URL, boto3 via `S3Server.client`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Dummy credentials the whole test session runs with (conftest's aws_test_credentials); the secret
# is distinctive so tests can assert it is written nowhere.
TEST_ACCESS_KEY = "raymc-test-access-key"
TEST_SECRET_KEY = "raymc-test-secret-key-never-written"
TEST_REGION = "us-east-1"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint URL and boto3 access to it."""

    endpoint: str

    def client(self, service: str = "s3", **credentials: str) -> Any:
        """A boto3 client of this server (the session's test credentials unless others are given)."""
        import boto3  # here: conftest's autouse fixture imports this module in every test session

        return boto3.client(service, endpoint_url=self.endpoint, region_name=TEST_REGION, **credentials)

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name, so tests sharing the server never see each other's objects."""
        name = f"raymc-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object in a bucket, by key, with its bytes."""
        client = self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


@contextlib.contextmanager
def running_moto(*, iam_checks: int | None = None) -> Iterator[S3Server]:
    """moto's server on a free 127.0.0.1 port, stopped on exit even when the block fails.
    `iam_checks=N` turns moto's IAM checks on after the first N requests (which set up users,
    keys and buckets), so the rest are allowed or denied as AWS would."""
    env = dict(os.environ)
    if iam_checks is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(iam_checks)
    port = _free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(process, port)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (just released), for an unreachable endpoint."""
    return _free_port()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(process: subprocess.Popen, port: int) -> None:
    """Return once the server accepts connections; fail if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with status {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"moto server did not listen on port {port} within {START_TIMEOUT_S:.0f} s")
