"""Run by test_object_storage_run in its own process, whose environment holds AWS_ENDPOINT_URL before
any Ray process starts (as a cluster's nodes hold their own settings): everything a user does with
data on S3, on a Ray cluster (ray.cluster_utils, every node on 127.0.0.1) whose nodes share
nothing but the bucket as far as raymc is concerned (every path it is given is s3://): two
training nodes and one CPU-only node of the data pool (label raymc-pool=data, as cluster.yaml's
cpu_data nodes), too small for a training worker.

1. the demo NYU .mat written to s3:// and prepared from there to s3:// by Ray tasks spread over
   the nodes, each reading the .mat and writing its shards straight to the bucket;
2. a run trained from s3:// with its run folder on s3://, one Ray Train worker on each training
   node and its Ray Data work on the data pool, failed by a killed worker after its first
   epoch's checkpoint reached the bucket, then resumed from that checkpoint by running it again;
3. evaluation, prediction and the results table read from s3://;
4. a two-trial search over a demo ImageNet ImageFolder read directly from s3://, its experiment
   on s3://, read back with raymc.results.
The working directory and RAYMC_CACHE are empty temporary folders; the script prints what it
found as one JSON line after RESULT.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks
from registered import registered_epochs  # beside this script, which runs as a file

import raymc  # noqa: F401  (binds the cluster to 127.0.0.1 before ray is imported)
from raymc import api, results
from raymc.cluster import free_port
from raymc.config import build_config
from raymc.data.demo import write_demo_imagenet, write_demo_nyu
from raymc.data.nyu_prepare import prepare_nyu
from raymc.errors import RaymcError
from raymc.resources import DATA_POOL, DATA_POOL_LABEL
from raymc.train import run_training
from raymc.tune.cli import main as tune_main

# Each training node: one Ray Train worker of 2 CPUs (two never fit on one node) and a spare CPU.
NODE_CPUS = 3
CPUS_PER_WORKER = 2
DATA_NODE_CPUS = 1  # below CPUS_PER_WORKER: no training worker lands on the data pool
# Rates at which ResNet-50 trains at 32 px from a batch of 4 (the default space's top rates diverge).
SPACE = """
from ray import tune
SPACE = {"lr": tune.loguniform(1e-4, 1e-3)}
"""


def gcs() -> str:
    """This script's cluster, for the State API (not another Ray on the machine)."""
    return ray.get_runtime_context().gcs_address


def training_workers() -> list:
    return list_actors(address=gcs(), filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


def kill_a_worker_once(run: str, nodes_seen: set[str]) -> threading.Thread:
    """In the background: once Ray Train has registered the run's first checkpoint on the bucket,
    note the nodes of the training workers and SIGKILL one of them."""

    def kill() -> None:
        deadline = time.monotonic() + 300
        while registered_epochs(run) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # into the next epoch
        workers = training_workers()
        nodes_seen.update(worker.node_id for worker in workers)
        os.kill(workers[-1].pid, signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def task_nodes(function_name: str, count: int) -> list[str]:
    """The nodes that ran the `count` finished tasks of a remote function (task events reach the
    State API a second or so after the tasks end)."""
    finished = [("func_or_class_name", "=", function_name), ("state", "=", "FINISHED")]
    deadline = time.monotonic() + 30
    while len(tasks := list_tasks(address=gcs(), filters=finished, limit=10_000)) < count:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return [task.node_id for task in tasks]


def ray_data_task_nodes() -> dict[str, list[str]]:
    """Operator name -> the nodes that ran Ray Data's finished read and map tasks."""
    tasks = list_tasks(address=gcs(), filters=[("state", "=", "FINISHED")], limit=10_000)
    nodes: dict[str, set[str]] = {}
    for task in tasks:
        if task.name.startswith(("ReadParquet", "MapBatches")):
            nodes.setdefault(task.name, set()).add(task.node_id)
    return {name: sorted(found) for name, found in nodes.items()}


def main(bucket: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # raymc's lines, as its CLIs print them
    root = f"s3://{bucket}"
    head = {"num_cpus": NODE_CPUS, "include_dashboard": True, "dashboard_port": free_port()}  # for the State API
    cluster = Cluster(initialize_head=True, head_node_args=head)
    cluster.add_node(num_cpus=NODE_CPUS)
    data_node = cluster.add_node(num_cpus=DATA_NODE_CPUS, labels={DATA_POOL_LABEL: DATA_POOL})
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        nodes = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])

        mat = write_demo_nyu(f"{root}/raw/nyu_tiny.mat", n=64, seed=1, height=48, width=64)
        prepare_nyu(mat, f"{root}/nyu10", seed=1)
        prepare_nodes = task_nodes("_write_shard", count=8)  # 64 frames in HDF5 chunks of 8
        settings = {"data": f"{root}/nyu10", "out": f"{root}/runs", "name": "s3-run", "image_size": 32, "batch": 16}
        config = build_config(
            {**settings, "epochs": 3, "num_workers": 2, "cpus_per_worker": CPUS_PER_WORKER, "warmup_epochs": 0.5}
        )
        run = f"{root}/runs/s3-run"
        training_nodes: set[str] = set()
        killer = kill_a_worker_once(run, training_nodes)
        try:
            run_training(config)
            failed = None
        except RaymcError as error:
            failed = str(error)
        killer.join()
        resumed = run_training(config)
        data_tasks = ray_data_task_nodes()  # before inference adds its own
        model = api.load_model(f"{run}/best_model.pt")
        metrics = api.evaluate(model)
        predictions = api.predict(model).take_all()
        table = results.load(run).epochs

        images = write_demo_imagenet(
            f"{root}/imagenet", classes=2, per_class=6, val_per_class=2, image_size=(40, 40), seed=1
        )
        space = Path(tempfile.mkdtemp()) / "space.py"  # the user's own file, read by the driver only
        space.write_text(SPACE)
        tune_argv = ["--space", str(space), "--data", str(images), "--out", f"{root}/tune", "--name", "exp"]
        tune_argv += ["--num-samples", "2"]
        tune_argv += ["--epochs", "1", "--image-size", "32", "--batch", "4", "--max-concurrent-trials", "1"]
        tune_status = tune_main([*tune_argv, "--metric", "val_loss", "--seed", "0"])
        trials = results.load(f"{root}/tune/exp").trials
        found = {
            "nodes": nodes,
            "data_node": data_node.node_id,
            "data_tasks": data_tasks,
            "prepare_nodes": prepare_nodes,
            "training_nodes": sorted(training_nodes),
            "failed": failed,
            "resumed_epochs": [row["epoch"] for row in resumed.history],
            "run_dir": resumed.run_dir,
            "acc": metrics["acc"],
            "predictions": len(predictions),
            "results_epochs": [int(e) for e in table["epoch"]],
            "tune_status": tune_status,
            "tune_trials": trials["status"].tolist(),
            "local_files": sorted(str(p.relative_to(Path.cwd())) for p in Path.cwd().rglob("*") if p.is_file())
            + sorted(str(p) for p in Path(os.environ["RAYMC_CACHE"]).rglob("*") if p.is_file()),
        }
        print("RESULT", json.dumps(found), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
