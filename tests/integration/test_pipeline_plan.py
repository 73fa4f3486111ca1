"""The Ray Data plan on real prepared folders: each shard is read, decoded and augmented in one task
(NYU and ImageNet), --cache serves the same views from the object store, and training rows held
in memory come in a new block order every pass."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.dataset import MaterializedDataset

from raymc.config import TrainConfig
from raymc.data.demo import write_demo_imagenet
from raymc.data.imagenet import scan_image_folder
from raymc.data.imagenet_prepare import prepare_imagenet
from raymc.data.pipeline import (
    DataSource,
    build_datasets,
    data_spec,
    dataset_info,
    start_epoch_clock,
    stored_rows,
)


def _epoch(dataset: ray.data.Dataset) -> dict[int, np.ndarray]:
    rows = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        rows.update({int(i): rgb for i, rgb in zip(batch.get("index", []), batch["rgb"], strict=True)})
    return rows


def _row_order(train: ray.data.Dataset, clock, epoch: int) -> list[tuple[int, bytes]]:
    """(label, training view) of each row of one pass of `epoch`, in the order they come; the
    dataset keeps its order (as under --deterministic), so the order is the plan's alone."""
    ray.get(clock.set.remote(epoch))
    train.context.execution_options.preserve_order = True
    batches = train.iter_batches(batch_size=None, batch_format="numpy")
    return [(int(label), rgb.tobytes()) for b in batches for label, rgb in zip(b["label"], b["rgb"], strict=True)]


def _assert_order_follows_the_epoch(build, clock) -> None:
    """An epoch's row order depends on (seed, epoch) only: not on how many passes ran before, nor
    on whether the dataset was built anew (a restarted worker group, a resubmitted driver)."""
    first = _row_order(build(), clock, 5)
    train = build()
    _row_order(train, clock, 1)  # another epoch ran first on this copy
    assert _row_order(train, clock, 5) == first, "an epoch's order changed with the passes before it"
    later = [label for label, _ in _row_order(train, clock, 6)]
    assert sorted(later) == sorted(label for label, _ in first), "a pass lost or repeated rows"
    assert later != [label for label, _ in first], "two epochs came in the same order"


def test_reading_and_augmenting_fuse_and_the_cache_serves_the_same_views(tiny_nyu):
    source = DataSource("nyu", tiny_nyu)
    spec = data_spec(dataset_info(source))
    config = TrainConfig(data=tiny_nyu, image_size=32, batch=8, seed=3)
    clock = start_epoch_clock()
    ray.get(clock.set.remote(2))
    streamed = build_datasets(source, spec, config, clock)
    labels = [len(b["label"]) for b in streamed["train"].iter_batches(batch_size=None, batch_format="numpy")]
    assert sum(labels) == spec.num_train
    operators = streamed["train"].stats()
    assert "ReadParquet->MapBatches(_train_view)" in operators, operators  # full-size pixels stay in the task
    _assert_order_follows_the_epoch(lambda: build_datasets(source, spec, config, clock)["train"], clock)

    cached = build_datasets(source, spec, dataclasses.replace(config, cache=True), clock)
    assert isinstance(cached["val"], MaterializedDataset)
    val_streamed, val_cached = _epoch(streamed["val"]), _epoch(cached["val"])
    assert val_streamed.keys() == val_cached.keys() and len(val_cached) == spec.num_val
    assert all(np.array_equal(val_streamed[i], val_cached[i]) for i in val_cached)
    train = cached["train"].take_all()
    assert len(train) == spec.num_train and train[0]["rgb"].shape == (3, 32, 32)
    cached_config = dataclasses.replace(config, cache=True, deterministic=True)  # materialized in order
    _assert_order_follows_the_epoch(lambda: build_datasets(source, spec, cached_config, clock)["train"], clock)
    ray.kill(clock)


def test_a_folder_whose_shards_mix_splits_is_read_one_block_per_shard(tiny_nyu, tmp_path):
    """Folders prepared before per-split files (raymc 0.1): Ray's default read parallelism cut
    them into blocks of 2-5 rows, each a task of its own every epoch."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(Path(tiny_nyu) / "dataset_info.json", legacy)
    trains = sorted(Path(tiny_nyu).glob("train-*.parquet"))
    for i, train_file in enumerate(trains):
        mixed = [pq.read_table(train_file)] + [pq.read_table(f) for f in Path(tiny_nyu).glob(f"test-{i:05d}.parquet")]
        pq.write_table(pa.concat_tables(mixed), legacy / f"part-{i:05d}.parquet")
    source = DataSource("nyu", str(legacy))
    spec = data_spec(dataset_info(source))
    rows = stored_rows(source, spec, "train", TrainConfig(data=str(legacy))).materialize()
    assert rows.count() == spec.num_train and set(rows.unique("split")) == {"train"}
    assert rows.num_blocks() == len(trains)


def _view_tasks(train: ray.data.Dataset, num_rows: int) -> int:
    """Run one epoch of a training view; how many tasks ran its view."""
    assert sum(len(b["label"]) for b in train.iter_batches(batch_size=None, batch_format="numpy")) == num_rows
    operators = train.stats()
    found = re.search(r"MapBatches\(_train_view\): (\d+) tasks executed", operators)
    assert found, operators
    return int(found.group(1))


def test_imagenet_shards_are_read_decoded_and_augmented_in_one_task(tmp_path, ray_session):
    # More than 8 shards x 128 images: the size at which raymc once split the read into more blocks
    # than files, which kept Ray from fusing the view into the read.
    demo = write_demo_imagenet(tmp_path / "demo", classes=4, per_class=272, val_per_class=2, image_size=(32, 24))
    prepare_imagenet(demo, tmp_path / "prepared")
    config = TrainConfig(image_size=32, batch=8, seed=3)
    source = DataSource("imagenet", str(tmp_path / "prepared"))
    spec = data_spec(dataset_info(source))
    clock = start_epoch_clock()
    ray.get(clock.set.remote(1))
    train = build_datasets(source, spec, config, clock)["train"]
    shards = len(list((tmp_path / "prepared").glob("train-*.parquet")))
    assert _view_tasks(train, spec.num_train) == shards
    operators = train.stats()
    assert "ReadParquet->MapBatches(_train_view)" in operators, operators  # no object-store hop between them

    # The folder itself is read in as many tasks as it has prepared shards, not in small blocks
    # (Ray Data idles a CPU between one task and the next).
    folder = DataSource("imagenet", str(demo), folder_index=scan_image_folder(demo))
    folder_train = build_datasets(folder, data_spec(dataset_info(folder)), config, clock)["train"]
    assert _view_tasks(folder_train, spec.num_train) == shards
    _assert_order_follows_the_epoch(
        lambda: build_datasets(folder, data_spec(dataset_info(folder)), config, clock)["train"], clock
    )
    ray.kill(clock)
