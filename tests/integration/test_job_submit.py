"""`ray job submit --working-dir .` against a real head node, as the README tells users to run it.

One private head node (127.0.0.1, free ports, its own token) serves the module: a prepare job and a
one-epoch training job run on it, then the tests read what a user would see: the CLI's output, the
run folder, the job API with and without the token, and the node's listening sockets.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from raymc.data.demo import write_demo_nyu
from tests.integration.head_node import HeadNode, command_line, start_head_node

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ray") is None, reason="the `ray` CLI is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 300


@dataclass
class Job:
    returncode: int
    output: str


@dataclass
class TrainJob:
    job: Job
    run_dir: Path
    sockets_seen: set[tuple[str, int, str]]  # (address, port, command) of the node's listening sockets


def submit(head: HeadNode, *command: str, log: Path, while_running=lambda: None) -> Job:
    """`ray job submit --working-dir . -- command` from the repo root; the CLI waits for the job's
    end and streams its logs. while_running() is called about once a second meanwhile."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["ray", "job", "submit", "--address", head.dashboard_url, "--working-dir", ".", "--", *command],
            cwd=REPO, env=head.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + JOB_TIMEOUT_S
        try:
            while process.poll() is None and time.monotonic() < deadline:
                while_running()
                time.sleep(1)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    return Job(process.returncode, log.read_text())


@pytest.fixture(scope="module")
def head() -> HeadNode:
    with start_head_node(num_cpus=2) as node:
        yield node


@pytest.fixture(scope="module")
def train_job(head, tmp_path_factory) -> TrainJob:
    """Prepare 64 tiny demo frames in one job, then train mc_resnet18 for one epoch in another."""
    root = tmp_path_factory.mktemp("job")
    mat = write_demo_nyu(root / "nyu_tiny.mat", n=64, seed=1, height=48, width=64)
    prepare = submit(
        head, "python", "-m", "raymc.prepare", "nyu", "--mat", str(mat), "--out", str(root / "prepared"),
        log=root / "prepare.log",
    )  # fmt: skip
    assert prepare.returncode == 0, prepare.output[-5000:]

    sockets: set[tuple[str, int, str]] = set()

    def record_sockets() -> None:
        sockets.update((address, port, command_line(pid)) for address, port, pid in head.listening_sockets())

    train = submit(
        head, "python", "-m", "raymc.train", "--data", str(root / "prepared"), "--out", str(root / "runs"),
        "--name", "job-test", "--epochs", "1", "--image-size", "32", "--batch", "16", "--num-workers", "2",
        log=root / "train.log", while_running=record_sockets,
    )  # fmt: skip
    record_sockets()
    return TrainJob(train, root / "runs" / "job-test", sockets)


def test_training_job_succeeds_and_writes_the_run_folder(train_job):
    assert train_job.job.returncode == 0, train_job.job.output[-5000:]
    assert "succeeded" in train_job.job.output
    assert f"run folder: {train_job.run_dir.resolve()}" in train_job.job.output

    history = pd.read_csv(train_job.run_dir / "history.csv")
    assert history["epoch"].tolist() == [1]
    summary = json.loads((train_job.run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["model"] == "mc_resnet18"
    best = torch.load(train_job.run_dir / "best_model.pt", weights_only=True)
    assert best["epoch"] == 1 and len(best["classes"]) == 10


def test_job_driver_connects_to_the_running_cluster(head, train_job):
    assert train_job.job.returncode == 0, train_job.job.output[-5000:]
    assert f"connected to the Ray cluster at {head.address}" in train_job.job.output
    assert "started a local Ray instance" not in train_job.job.output
    # The training workers were actors of this cluster, not of a second one the driver started.
    query = urllib.parse.urlencode(
        {"filter_keys": "class_name", "filter_predicates": "=", "filter_values": "RayTrainWorker", "limit": 100}
    )
    status, body = head.http(f"/api/v0/actors?{query}", token=head.token)
    assert status == 200, body
    assert len(json.loads(body)["data"]["result"]["result"]) == 2


def test_working_dir_upload_holds_the_sources_not_runs_or_git(head, train_job):
    """`--working-dir .` uploads the repo minus .gitignore'd folders (runs/, *.egg-info) and .git."""
    unpacked = head.temp_dir / "ray" / "session_latest" / "runtime_resources" / "working_dir_files"
    packages = [p for p in unpacked.iterdir() if p.is_dir()]
    assert packages
    for package in packages:
        assert (package / "raymc" / "train.py").is_file()
        top = {p.name for p in package.iterdir()}
        assert not top & {"runs", ".git", "raymc.egg-info", "build", "dist"}, top
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        assert size < 5 * 2**20, f"{package.name}: {size / 2**20:.1f} MiB uploaded"


def test_job_api_refuses_requests_without_the_token(head, train_job):
    assert head.http("/api/jobs/")[0] == 401  # no token
    assert head.http("/api/jobs/", token="not-the-token")[0] == 403
    assert head.http("/api/jobs/", method="POST")[0] == 401  # a job submission without a token
    status, body = head.http("/api/jobs/", token=head.token)
    assert status == 200
    assert sorted(job["entrypoint"].split()[2] for job in json.loads(body)) == ["raymc.prepare", "raymc.train"]


def _is_loopback(address: str) -> bool:
    if address == "*":  # ss's wildcard: every interface
        return False
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def test_head_node_listens_on_loopback_only(head, train_job):
    """No Ray process of the node (GCS, raylet, dashboard, agents, client server, workers, the
    job's driver) listens on 0.0.0.0, :: or a non-loopback address, while the training job runs
    or after it.

    The one exception is PyTorch's: rank 0's torch.distributed rendezvous store (c10d TCPStore,
    at MASTER_ADDR:MASTER_PORT) binds to every interface while training runs, whatever
    MASTER_ADDR says; torch has no setting for its bind address."""
    sockets = train_job.sockets_seen
    assert {head.gcs_port, head.dashboard_port} <= {port for _, port, _ in sockets}
    assert any(command.startswith("ray::RayTrainWorker") for _, _, command in sockets)  # seen mid-training
    exposed = {s for s in sockets if not _is_loopback(s[0])}
    # The worker process's title follows what it runs: "ray::RayTrainWorker.<method>" while it
    # trains, "ray::execute.<function>" while Ray Train runs its set-up/tear-down functions on it.
    torch_store = {s for s in exposed if s[2].startswith(("ray::RayTrainWorker", "ray::execute."))}
    assert exposed - torch_store == set()
    assert len({port for _, port, _ in torch_store}) <= 1, torch_store  # one store, in rank 0 only
