"""Run by test_object_storage_run in its own process, whose environment holds AWS_ENDPOINT_URL before
raymc starts its local Ray (as a user's shell does): everything a user does with data on S3.

1. the demo NYU .mat written to s3:// and prepared from there to s3:// (Ray tasks read the .mat and
   write the shards straight to the bucket);
2. a run trained from s3:// with its run folder on s3://, failed by a killed worker after its first
   epoch's checkpoint reached the bucket, then resumed from that checkpoint by running it again;
3. evaluation, prediction and the results table read from s3://.
The working directory and RAYMC_CACHE are empty temporary folders; the script prints what it
found as one JSON line after RESULT.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import ray
from ray.util.state import list_actors

import raymc  # noqa: F401  (binds the local Ray to 127.0.0.1 before ray is imported)
from raymc import api, results, storage
from raymc.config import build_config
from raymc.data.demo import write_demo_nyu
from raymc.data.nyu_prepare import prepare_nyu
from raymc.errors import RaymcError
from raymc.train import run_training


def kill_a_worker_once(checkpoint: str) -> threading.Thread:
    """In the background: once `checkpoint` is on the bucket, SIGKILL a Ray Train worker."""

    def kill() -> None:
        deadline = time.monotonic() + 300
        while not storage.is_file(f"{checkpoint}/progress.json") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # into the next epoch
        workers = list_actors(
            address=ray.get_runtime_context().gcs_address,
            filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        )
        os.kill(workers[-1].pid, signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def main(bucket: str) -> None:
    root = f"s3://{bucket}"
    mat = write_demo_nyu(f"{root}/raw/nyu_tiny.mat", n=64, seed=1, height=48, width=64)
    prepare_nyu(mat, f"{root}/nyu10", seed=1)
    settings = {"data": f"{root}/nyu10", "out": f"{root}/runs", "name": "s3-run", "image_size": 32, "batch": 16}
    config = build_config({**settings, "epochs": 3, "num_workers": 2, "warmup_epochs": 0.5, "lr": 0.05})
    run = f"{root}/runs/s3-run"
    killer = kill_a_worker_once(f"{run}/checkpoint_epoch_0001")
    try:
        run_training(config)
        failed = None
    except RaymcError as error:
        failed = str(error)
    killer.join()
    resumed = run_training(config)
    model = api.load_model(f"{run}/best_model.pt")
    metrics = api.evaluate(model)
    predictions = api.predict(model).take_all()
    table = results.load(run).epochs
    found = {
        "failed": failed,
        "resumed_epochs": [row["epoch"] for row in resumed.history],
        "run_dir": resumed.run_dir,
        "acc": metrics["acc"],
        "predictions": len(predictions),
        "results_epochs": [int(e) for e in table["epoch"]],
        "local_files": sorted(str(p.relative_to(Path.cwd())) for p in Path.cwd().rglob("*") if p.is_file())
        + sorted(str(p) for p in Path(os.environ["RAYMC_CACHE"]).rglob("*") if p.is_file()),
    }
    print("RESULT", json.dumps(found), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
