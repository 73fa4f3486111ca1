"""bench/gpu_throughput.py runs where Ray, pyarrow, YAML and pandas are missing, as on the lent GPU
machines: its CPU smoke version here (no timings are checked, only that every arm ran)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_step import ABSENT_THERE

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_throughput.py"


def _run(*argv: str) -> subprocess.CompletedProcess:
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in ABSENT_THERE)
    argv_list = [str(SCRIPT), *argv]
    probe = f"import runpy, sys; {blocked}; sys.argv = {argv_list!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)


def test_the_cpu_smoke_version_runs_every_arm_without_ray():
    done = _run("--device", "cpu", "--image-size", "32", "--steps", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "images/s" in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| sd_resnet50 step",
        "| mc_resnet18 step",
        "| JPEG decode + crop on cpu, batches of 4",
        "| JPEG decode + crop on the host, one core",
    ]
    pixels = next(line for line in done.stdout.splitlines() if line.startswith("| decoded pixels"))
    assert pixels.split(" | ")[2] == "0"  # on a CPU both paths decode with libjpeg-turbo


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so():
    done = _run()
    assert done.returncode == 0 and "no CUDA GPU" in done.stdout
