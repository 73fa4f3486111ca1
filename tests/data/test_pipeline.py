"""Prepared-folder metadata and on-device normalization."""

from __future__ import annotations

import json
import time

import pytest
import ray
from ray.util.state import list_actors

from raymc.data.pipeline import cache_in_object_store, data_spec, read_dataset_info, start_epoch_clock
from raymc.errors import ConfigError, DataError

NYU_INFO = {
    "dataset": "nyu",
    "classes": ["a", "b"],
    "counts": {"train": {"a": 3, "b": 2}, "test": {"a": 1, "b": 1}},
    "depth_mean": 2.0,
    "depth_std": 0.5,
}


def test_folder_without_dataset_info_is_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}.*dataset_info.json"):
        read_dataset_info(str(tmp_path))


def test_info_missing_a_key_is_named(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"dataset": "nyu", "classes": ["a"]}))
    with pytest.raises(DataError, match="counts"):
        data_spec(read_dataset_info(str(tmp_path)))


def test_nyu_spec_has_rgb_then_depth_with_train_statistics():
    spec = data_spec(NYU_INFO)
    assert spec.classes == ("a", "b") and spec.num_train == 5 and spec.num_val == 2
    assert [s.column for s in spec.streams] == ["rgb", "depth"]
    assert spec.streams[1].mean == (2.0,) and spec.streams[1].missing_is_zero


def test_the_epoch_clock_lives_on_the_drivers_node_and_comes_back_when_killed(ray_session):
    """A run survives losing the clock's node: the clock restarts and calls made meanwhile are retried."""
    clock = start_epoch_clock()
    ray.get(clock.set.remote(3))
    (actor,) = [
        a
        for a in list_actors(
            address=ray.get_runtime_context().gcs_address,  # this session's cluster, never "the latest"
            filters=[("actor_id", "=", clock._actor_id.hex())],  # not another run's clock
        )
    ]
    assert actor.node_id == ray.get_runtime_context().get_node_id()
    ray.kill(clock, no_restart=False)
    deadline = time.monotonic() + 60
    while ray.get(clock.get.remote()) != 0:  # calls are answered by the old clock, then the restarted one
        assert time.monotonic() < deadline, "the clock did not restart"
        time.sleep(0.1)
    ray.get(clock.set.remote(4))
    assert ray.get(clock.get.remote()) == 4
    ray.kill(clock)


def test_cache_refuses_what_the_object_store_cannot_hold(ray_session):
    rows = ray.data.range_tensor(4, shape=(1024,))
    with pytest.raises(ConfigError, match=r"--cache needs about .* GiB .*training rows .*drop --cache"):
        cache_in_object_store({"training rows": (rows, 10**9), "validation view": (rows, 4)})
