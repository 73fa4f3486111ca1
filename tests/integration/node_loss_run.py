"""Run by test_fault_tolerance in its own process (a driver joins one cluster at a time).

A Ray cluster (ray.cluster_utils) on 127.0.0.1: a head and three 2-CPU nodes. One 3-epoch run of
two workers, with --max-failures 2, loses two nodes:
1. in epoch 2, the node holding the workers is drained with reason PREEMPTION (as a cloud's spot
   reclaim notice does): the workers checkpoint mid-epoch, then the node is removed;
2. in epoch 3, the node the run recovered on dies without notice.
The run recovers on the next node each time. It is --deterministic, and the same settings then run
once more without interruption (run "reference"), which test_fault_tolerance compares it with.
Prints the epochs it ran.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from registered import latest_registered, registered_epochs  # beside this script, which runs as a file

import raymc  # noqa: F401  (binds the cluster to 127.0.0.1 before ray is imported)
from raymc import api
from raymc.config import build_config
from raymc.data.demo import write_demo_nyu
from raymc.data.nyu_prepare import prepare_nyu
from raymc.errors import ConfigError
from raymc.train import run_training

DEADLINE_S = 300


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {DEADLINE_S} s")
        time.sleep(0.2)


def drain_for_preemption(address: str, node_id: str) -> None:
    """What a spot reclaim notice does: mark the node as draining for preemption, with a deadline."""
    from ray.core.generated import autoscaler_pb2

    deadline_ms = time.time_ns() // 1_000_000 + 60_000
    reason = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")
    accepted, message = ray._raylet.GcsClient(address=address).drain_node(node_id, reason, "spot reclaim", deadline_ms)
    assert accepted, message


def training_node_id() -> str:
    """The node of the Ray Train worker group's placement group (both workers pack onto one node)."""
    groups = [g for g in ray.util.placement_group_table().values() if g["state"] == "CREATED"]
    return next(node for g in groups for node in g["bundles_to_node_id"].values())


def main(workdir: Path) -> None:
    os.environ["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"] = "0.5"  # notice reaches the workers sooner
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    # 2 workers x 1 CPU fit on any 2-CPU node, never on the head (its CPU is Ray Data's).
    nodes = [cluster.add_node(num_cpus=2) for _ in range(3)]
    run_dir = workdir / "runs" / "node-loss"
    try:
        ray.init(address=cluster.address)
        mat = write_demo_nyu(workdir / "tiny.mat", n=96, seed=3, height=48, width=64)
        prepare_nyu(mat, workdir / "prepared", seed=3)
        config = build_config(
            {
                "data": str(workdir / "prepared"),
                "out": str(workdir / "runs"),
                "name": "node-loss",
                "epochs": 3,
                "image_size": 32,
                "batch": 4,
                "num_workers": 2,
                "cpus_per_worker": 1,
                "warmup_epochs": 0.5,
                "lr": 0.01,
                "max_failures": 2,
                "preemption_check_steps": 3,
                "deterministic": True,
            }
        )
        try:  # four nodes, local paths, no --shared-fs: refused before anything runs
            run_training(config)
        except ConfigError as refused:
            print("REFUSED", refused, flush=True)
        config = dataclasses.replace(config, shared_fs=True)  # the simulated nodes share this disk

        def remove(node_id: str) -> None:
            cluster.remove_node(next(node for node in nodes if node.node_id == node_id))

        def lose_two_nodes() -> None:
            wait_for(lambda: registered_epochs(run_dir) >= 1, "checkpoint of epoch 1")
            preempted = training_node_id()
            drain_for_preemption(cluster.address, preempted)
            wait_for(
                lambda: "_step_" in latest_registered(run_dir).get("checkpoint_dir_name", ""), "mid-epoch checkpoint"
            )
            remove(preempted)
            print("PREEMPTED", preempted, flush=True)
            wait_for(lambda: registered_epochs(run_dir) >= 2, "checkpoint of epoch 2")
            time.sleep(1.0)  # into epoch 3
            lost = training_node_id()
            remove(lost)
            print("LOST", lost, flush=True)

        threading.Thread(target=lose_two_nodes, daemon=True).start()
        result = run_training(config)
        print("EPOCHS", json.dumps([row["epoch"] for row in result.history]))
        best = run_dir / "best_model.pt"
        try:  # evaluation's Ray Data tasks read the model's (local) training data on any node
            api.evaluate(best)
        except ConfigError as refused:
            print("EVAL-REFUSED", refused, flush=True)
        print("EVAL-SHARED", json.dumps(api.evaluate(best, shared_fs=True)["acc"]), flush=True)
        run_training(dataclasses.replace(config, name="reference"))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
