"""What a user sees of a successful run on a local Ray: raymc's lines, and almost nothing of Ray's.

`python -m raymc.train` runs in its own process and starts its own local Ray beside the test
session's (so two Ray instances are up, as when one test failed to reach "the latest cluster").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

# raymc's own lines: its CLI and loggers print plain messages; its workers' epoch lines arrive
# with Ray's "(RayTrainWorker pid=N)" prefix.
WORKER_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)*\((?P<actor>\w+) pid=\d+(, ip=[\d.]+)?\)(\x1b\[[0-9;]*m)* ")
RAYMC_WORKER_LINE = re.compile(r"^(epoch \d+/\d+ |resumed from|a node is about to be preempted)")
RAY_LOG_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR)\b \S+\.(py|cc):\d+|\b[IWE] \d+ \d+\] \S+\.cc:\d+")
MAX_FOREIGN_LINES = 5


def foreign_lines(output: str) -> list[str]:
    """The lines of a run's output that are not raymc's."""
    foreign = []
    for line in output.splitlines():
        prefix = WORKER_PREFIX.match(line)
        message = line[prefix.end() :] if prefix else line
        if prefix and RAYMC_WORKER_LINE.match(message):
            continue
        if prefix or RAY_LOG_LINE.search(line) or line.startswith(("Traceback", "  File ")) or "Warning:" in line:
            foreign.append(line)
    return foreign


@pytest.fixture(scope="module")
def quiet_run(tiny_nyu, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("quiet")
    done = subprocess.run(
        [sys.executable, "-m", "raymc.train", "--data", tiny_nyu, "--out", str(out), "--name", "quiet"]
        + ["--epochs", "1", "--image-size", "32", "--batch", "16"],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    return output


def test_a_successful_run_prints_raymcs_lines_and_at_most_five_others(quiet_run):
    foreign = foreign_lines(quiet_run)
    assert len(foreign) <= MAX_FOREIGN_LINES, "\n".join(foreign)
    assert "Traceback" not in quiet_run
    assert not [line for line in foreign if re.search(r"\bERROR\b|\bE \d+ ", line)]
    assert len(re.findall(r"epoch 1/1 ", quiet_run)) == 1  # one line per epoch, from rank 0 only
    started = r"started a local Ray on 127\.0\.0\.1 .*dashboard http://127\.0\.0\.1:\d+, Ray's logs in /"
    assert re.search(started, quiet_run)
    assert "run folder: " in quiet_run


def test_the_line_classifier_counts_rays_lines_and_not_raymcs():
    """foreign_lines itself, on lines of each kind seen in runs before raymc silenced them."""
    raymc = [
        "started a local Ray on 127.0.0.1 (2 CPUs, 0 GPUs); dashboard http://127.0.0.1:8265, Ray's logs in /tmp/x",
        "\x1b[36m(RayTrainWorker pid=3280)\x1b[0m epoch 1/8  train_loss 2.4858  *best*",
        "run folder: runs/x",
    ]
    ray = [
        "\x1b[36m(RayTrainWorker pid=3253)\x1b[0m Reporting training result 1: TrainingReport(checkpoint=None)",
        "\x1b[36m(SplitCoordinator pid=3533)\x1b[0m Starting execution of Dataset train_0",
        "\x1b[36m(TrainController pid=3123)\x1b[0m [2026-12-02 01:09:29,796 E 3123 3183] core_worker.cc:2465: Actor",
        "2026-12-02 01:09:06,495\tINFO parquet_datasource.py:1416 -- Estimated parquet encoding ratio is 0.856.",
        "Traceback (most recent call last):",
    ]
    assert foreign_lines("\n".join(raymc + ray)) == ray
