"""`ray job submit --working-dir .` against a real head node, as the README tells users to run it.

One private head node (127.0.0.1, free ports, its own token) serves the module: a prepare job, then
a training job whose driver is stopped (`ray job stop`) after its first checkpoint, then the same
command submitted again, which resumes. The tests read what a user would see: the CLI's
output, the run folder, the job API with and without the token, and the node's listening sockets.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from raymc.data.demo import write_demo_nyu
from tests.integration.head_node import HeadNode, command_line, start_head_node
from tests.integration.registered import registered_history

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ray") is None, reason="the `ray` CLI is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 300
# Enough epochs that the run cannot finish between the first checkpoint and the stop taking
# effect (a tiny epoch takes about 1.6 s on 2 CPUs; stopping takes up to a poll plus the stop).
EPOCHS = 5


@dataclass
class Job:
    returncode: int
    output: str


@dataclass
class TrainJob:
    job: Job  # the job that resumed and finished the run
    stopped: Job  # the first job, whose driver was stopped after its first checkpoint
    history_at_stop: list[dict]  # the history in the run's newest checkpoint when the driver was stopped
    run_dir: Path
    sockets_seen: set[tuple[str, int, str]]  # (address, port, command) of the node's listening sockets


def submit(
    head: HeadNode, *command: str, log: Path, while_running=lambda: None, submission_id: str | None = None
) -> Job:
    """`ray job submit --working-dir . -- command` from the repo root; the CLI waits for the job's
    end and streams its logs. while_running() is called about once a second meanwhile."""
    named = ["--submission-id", submission_id] if submission_id else []
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["ray", "job", "submit", "--address", head.dashboard_url, *named, "--working-dir", ".", "--", *command],
            cwd=REPO,
            env=head.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
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
    """Prepare 64 tiny demo frames in one job; train mc_resnet18 for EPOCHS epochs in another,
    stopped after its first checkpoint; then submit the same training command again."""
    root = tmp_path_factory.mktemp("job")
    mat = write_demo_nyu(root / "nyu_tiny.mat", n=64, seed=1, height=48, width=64)
    prepare = submit(
        head,
        "python",
        "-m",
        "raymc.prepare",
        "nyu",
        "--mat",
        str(mat),
        "--out",
        str(root / "prepared"),
        log=root / "prepare.log",
    )
    assert prepare.returncode == 0, prepare.output[-5000:]

    run_dir = root / "runs" / "job-test"
    command = [
        "python",
        "-m",
        "raymc.train",
        "--data",
        str(root / "prepared"),
        "--out",
        str(root / "runs"),
        "--name",
        "job-test",
        "--epochs",
        str(EPOCHS),
        "--image-size",
        "32",
        "--batch",
        "16",
        "--num-workers",
        "2",
    ]
    sockets: set[tuple[str, int, str]] = set()
    at_stop: list[dict] = []

    def record_sockets() -> None:
        sockets.update((address, port, command_line(pid)) for address, port, pid in head.listening_sockets())

    def stop_after_first_checkpoint() -> None:
        record_sockets()
        history = registered_history(run_dir)
        if history and not at_stop:
            at_stop.extend(history)
            stop = ["ray", "job", "stop", "--address", head.dashboard_url, "train-1"]
            subprocess.run(stop, env=head.env(), check=True, capture_output=True, timeout=60)

    stopped = submit(
        head, *command, log=root / "train-1.log", while_running=stop_after_first_checkpoint, submission_id="train-1"
    )
    resumed = submit(head, *command, log=root / "train-2.log", while_running=record_sockets, submission_id="train-2")
    record_sockets()
    return TrainJob(resumed, stopped, at_stop, run_dir, sockets)


def test_training_job_succeeds_and_writes_the_run_folder(train_job):
    assert train_job.job.returncode == 0, train_job.job.output[-5000:]
    assert "succeeded" in train_job.job.output
    assert f"run folder: {train_job.run_dir.resolve()}" in train_job.job.output

    history = pd.read_csv(train_job.run_dir / "history.csv")
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    summary = json.loads((train_job.run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == EPOCHS and summary["model"] == "mc_resnet18"
    best = torch.load(train_job.run_dir / "best_model.pt", weights_only=True)
    assert 1 <= best["epoch"] <= EPOCHS and len(best["classes"]) == 10


def test_a_stopped_job_driver_leaves_a_run_the_same_command_resumes(train_job):
    """The first job's driver was stopped once a checkpoint was registered, before the run ended;
    the same command submitted again continued from its newest checkpoint: every epoch once, the
    epochs trained before the stop not trained again."""
    assert "Job 'train-1' was stopped" in train_job.stopped.output
    resumed = re.search(r"resumed from the checkpoint of epoch (\d+) \(\+0 steps\)", train_job.job.output)
    assert resumed, train_job.job.output[-5000:]
    resumed_epoch = int(resumed.group(1))
    assert len(train_job.history_at_stop) <= resumed_epoch < EPOCHS, "the run ended before the stop"
    history = json.loads((train_job.run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert history[: len(train_job.history_at_stop)] == train_job.history_at_stop


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
    workers = json.loads(body)["data"]["result"]["result"]
    assert sorted(Counter(w["job_id"] for w in workers).values()) == [2, 2]  # 2 per training job


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
    assert sorted(job["entrypoint"].split()[2] for job in json.loads(body)) == [
        "raymc.prepare",
        "raymc.train",
        "raymc.train",
    ]


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
    assert len({port for _, port, _ in torch_store}) <= 2, torch_store  # one per training job, in rank 0 only
