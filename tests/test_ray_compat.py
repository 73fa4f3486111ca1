"""Each private Ray API and Ray-bug workaround in raymc.ray_compat, checked against the installed Ray.

A failure here after a Ray upgrade says which workaround broke (the private API moved) or became
unneeded (Ray fixed the issue it names): mend or remove it in raymc/ray_compat.py.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
import warnings

import pytest
import ray
from ray.data import DataContext
from ray.data.context import DEFAULT_USE_DATASOURCE_V2
from ray.train import DataConfig
from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import uniform
from ray.util.annotations import RayDeprecationWarning
from ray.util.placement_group import PlacementGroup, placement_group

from raymc import ray_compat


def test_data_config_still_splits_every_dataset_equally_ray_63285():
    assert hasattr(DataConfig, "_resolve_execution_options"), "DataConfig._resolve_execution_options is gone"
    configure = inspect.getsource(DataConfig.configure)
    assert "equal=True" in configure, "Ray's DataConfig changed its split: review ExactValidationDataConfig"
    parameters = inspect.signature(DataConfig.__init__).parameters
    assert not any("equal" in name for name in parameters), (
        "DataConfig takes an unequal-split option now (ray-project/ray#63285 fixed): use it instead of "
        "ExactValidationDataConfig"
    )


def test_parquet_reader_v1_is_chosen_only_inside_the_block_ray_63326():
    context = DataContext.get_current()
    assert DEFAULT_USE_DATASOURCE_V2 is True, "Ray's default Parquet reader is V1 again: drop parquet_reader_v1"
    before = context.use_datasource_v2
    with ray_compat.parquet_reader_v1():
        assert context.use_datasource_v2 is False
    assert context.use_datasource_v2 == before


@ray.remote(num_cpus=0)
class _GroupMaker:
    """An actor that reserves a placement group, as a Train controller does for its workers."""

    def make(self) -> bytes:
        group = placement_group([{"CPU": 0.01}])
        ray.get(group.ready())
        return group.id.binary()


def test_the_placement_group_of_a_dead_creator_is_removed_ray_53921(ray_session):
    maker = _GroupMaker.remote()
    group_id = ray.PlacementGroupID(ray.get(maker.make.remote()))
    ray.kill(maker)
    deadline = time.monotonic() + 30
    while ray.util.placement_group_table()[group_id.hex()]["state"] != "REMOVED":
        assert time.monotonic() < deadline, "the orphaned placement group was never removed"
        ray_compat.remove_orphaned_placement_groups()
        time.sleep(0.2)


def test_the_placement_group_of_a_live_creator_is_kept(ray_session):
    maker = _GroupMaker.remote()
    group_id = ray.PlacementGroupID(ray.get(maker.make.remote()))
    try:
        assert ray_compat.remove_orphaned_placement_groups() == 0
        assert ray.util.placement_group_table()[group_id.hex()]["state"] == "CREATED"
    finally:  # the group outlives its creator (the bug above): left, its CPU starves later tests' Ray Data
        ray.kill(maker)
        ray.util.remove_placement_group(PlacementGroup(group_id))


def test_optuna_search_internals_are_where_raymc_reads_them():
    searcher = OptunaSearch({"lr": uniform(0.1, 0.2)}, metric="val_acc", mode="max")
    assert isinstance(searcher.__dict__.get(ray_compat.SEARCHER_SPACE_ATTR), dict)
    searcher.suggest("t1")
    assert set(ray_compat.optuna_trials(searcher)) == {"t1"}
    assert ray_compat.optuna_study(searcher).trials[0].number == ray_compat.optuna_trials(searcher)["t1"].number
    searcher.on_trial_complete("t1", result={"val_acc": 0.5})
    assert "t1" in ray_compat.completed_trial_ids(searcher)


def test_asha_internals_are_where_raymc_reads_them():
    scheduler = AsyncHyperBandScheduler(time_attr="epoch", metric="val_loss", mode="min", max_t=8, grace_period=1)
    trial = type("Trial", (), {"trial_id": "t1"})()
    scheduler.on_trial_add(None, trial)
    rungs = ray_compat.asha_rungs(scheduler, "t1")
    assert rungs and all(isinstance(milestone, (int, float)) and isinstance(seen, dict) for milestone, seen in rungs)
    assert ray_compat.asha_metric_sign(scheduler) == -1
    assert ray_compat.asha_time_limit(scheduler) == ("epoch", 8)


def test_the_modules_ray_data_workers_import_do_not_load_ray_tune():
    """ray_compat imports Ray Tune; the modules every Ray Data and Train worker imports must not
    (it cost each worker process 1.5 s of CPU and 190 MB, measured in bench/run.py)."""
    modules = "raymc.data.pipeline, raymc.loop"
    probe = f"import sys, {modules}; print([m for m in ('ray.tune', 'optuna') if m in sys.modules])"

    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert loaded.stdout.strip() == "[]"


def test_raymc_ingest_options_avoid_rays_deprecated_default():
    with pytest.warns(RayDeprecationWarning, match="exclude_resources"):
        DataConfig()._resolve_execution_options("train")  # Ray's default: when this stops warning, drop ingest_options
    with warnings.catch_warnings():
        warnings.simplefilter("error", RayDeprecationWarning)
        options = ray_compat.ExactValidationDataConfig(execution_options=ray_compat.ingest_options())
        resolved = options._resolve_execution_options("val")
    assert resolved.preserve_order == DataContext.get_current().execution_options.preserve_order
