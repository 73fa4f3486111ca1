"""A user's whole path on object storage, against the suite's S3 server, on a three-node Ray cluster
(two training nodes, one of the CPU-only data pool):
prepare, train, resume, evaluate, predict, search and read results, all from s3://, with nothing of
raymc's written to local disk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.s3_server import TEST_SECRET_KEY

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3_run(s3_server, tmp_path_factory) -> tuple[dict, dict[str, bytes], str]:
    bucket = s3_server.new_bucket()
    workdir, cache = tmp_path_factory.mktemp("s3_cwd"), tmp_path_factory.mktemp("s3_cache")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAYMC_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("s3_run.py")), bucket],
        cwd=workdir,
        env=env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    (tmp_path_factory.mktemp("s3_log") / "output.txt").write_text(output)  # outside the run's working directory
    assert done.returncode == 0, output[-5000:]
    found = json.loads(output.split("RESULT", 1)[1].strip().splitlines()[0])
    return found, s3_server.objects(bucket), output


def test_a_run_trains_from_s3_into_s3_and_resumes_from_there(s3_run):
    found, objects, output = s3_run
    assert found["failed"] and "stay usable: run the same command again to resume" in found["failed"]
    # killed a second into epoch 2: resumed from epoch 1's checkpoint, or epoch 2's if it was reported first
    assert re.search(r"resumed from the checkpoint of epoch [12] \(\+0 steps\)", output), output[-3000:]
    assert found["resumed_epochs"] == [1, 2, 3]  # every epoch once
    assert found["run_dir"].startswith("s3://")
    for name in ("history.csv", "summary.json", "best_model.pt", "config.json"):
        assert f"runs/s3-run/{name}" in objects, name
    assert any(key.startswith("runs/s3-run/checkpoint_epoch_0003/") for key in objects)


def test_prepare_tasks_ran_on_every_node_and_training_workers_on_both_training_nodes(s3_run):
    found, _, _ = s3_run
    assert len(found["nodes"]) == 3
    assert sorted(set(found["prepare_nodes"])) == found["nodes"] and len(found["prepare_nodes"]) == 8
    assert found["training_nodes"] == sorted(set(found["nodes"]) - {found["data_node"]})


def test_the_runs_ray_data_work_ran_on_the_data_pool_only(s3_run):
    found, _, output = s3_run
    assert "Ray Data works on the data pool: 1 node(s) labelled raymc-pool=data" in output
    train_view = [name for name in found["data_tasks"] if "_train_view" in name]
    assert train_view, found["data_tasks"]  # the read and the augmentation fused into one task
    assert all(nodes == [found["data_node"]] for nodes in found["data_tasks"].values()), found["data_tasks"]


def test_the_data_set_was_prepared_on_s3_in_a_generation_named_by_its_marker(s3_run):
    _, objects, _ = s3_run
    generation = json.loads(objects["nyu10/_LATEST.json"])["generation"]
    assert f"nyu10/{generation}/dataset_info.json" in objects
    assert any(key.startswith(f"nyu10/{generation}/train-") for key in objects)


def test_evaluate_predict_and_results_read_from_s3(s3_run):
    found, _, _ = s3_run
    assert found["predictions"] > 0
    assert found["results_epochs"] == [1, 2, 3]
    assert 0.0 <= found["acc"] <= 1.0


def test_a_search_over_an_image_folder_on_s3_keeps_its_experiment_there(s3_run):
    found, objects, _ = s3_run
    assert found["tune_status"] == 0 and len(found["tune_trials"]) == 2
    for name in ("results.csv", "trials.parquet", "best_config.json", "search.json"):
        assert f"tune/exp/{name}" in objects, name


def test_nothing_of_raymcs_is_written_to_local_disk_and_no_key_anywhere(s3_run):
    found, objects, output = s3_run
    assert found["local_files"] == []  # the working directory and RAYMC_CACHE stay empty
    assert TEST_SECRET_KEY not in output
    assert not [key for key, data in objects.items() if TEST_SECRET_KEY.encode() in data]
