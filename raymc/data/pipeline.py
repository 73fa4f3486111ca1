"""Ray Data datasets for training: read prepared Parquet, preprocess on CPUs.

Ray Data does the CPU work (decode, crop, flip, jitter) and ships uint8 RGB and float32 metric
depth to the workers, which normalize on their device (raymc.data.spec).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.data import FileShuffleConfig, RandomSeedConfig
from ray.data.expressions import col
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raymc import storage
from raymc.config import TrainConfig
from raymc.config_rules import check_decode_on
from raymc.data import device_decode, imagenet, shards
from raymc.data.augment import augment_batch, eval_batch, val_short_side
from raymc.data.publish import INFO_FILE, live_folder
from raymc.data.spec import RGB_STREAM, DataSpec, StreamSpec
from raymc.errors import ConfigError, DataError
from raymc.resources import data_task_options

TRAIN_SPLIT = "train"
# Rows per preprocessing call: small enough that a task holds few decoded full-resolution images
# at a time, large enough to amortize the per-call overhead.
PREPROCESS_BATCH = 32


@dataclass(frozen=True)
class DataSource:
    """Where training data is and in which form."""

    kind: str  # "nyu" or "imagenet"
    location: str  # local path or URI
    folder_index: imagenet.ImageFolderIndex | None = None  # the scan of an ImageFolder tree read directly

    @property
    def prepared(self) -> bool:
        """A raymc.prepare Parquet folder (else an ImageFolder tree)."""
        return self.folder_index is None


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class EpochClock:
    """Tells Ray Data tasks the current epoch, so augmentation is seeded by (seed, epoch, index).

    Its state is only what the workers set at the start of each epoch, so when its node is lost it
    restarts elsewhere and calls made meanwhile are retried: a run with --max-failures survives.
    """

    def __init__(self) -> None:
        self.epoch = 0

    def set(self, epoch: int) -> None:
        self.epoch = epoch

    def get(self) -> int:
        return self.epoch


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed of (run seed, epoch) for the order of an epoch's data."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclass
class EpochFileShuffle(FileShuffleConfig):
    """Ray's file shuffle, seeded by (run seed, epoch) with the epoch read from the EpochClock.

    Ray seeds each pass by how many passes this copy of the dataset has run; a worker group
    restarted after a failure, or a resubmitted driver, starts a new copy counting from 0 and would
    replay epoch 1's file order. Ray Data asks for the seed when a pass starts, after every worker
    has set the clock to the epoch it trains (begin_epoch in raymc.loop).
    """

    clock: Any = field(default=None, kw_only=True)

    def get_seed(self, execution_idx: int = 0) -> int:
        return epoch_seed(self.seed, ray.get(self.clock.get.remote()))


@dataclass
class EpochBlockOrder(RandomSeedConfig):
    """randomize_block_order's seed, by (run seed, epoch) from the EpochClock (as EpochFileShuffle)."""

    clock: Any = field(default=None, kw_only=True)

    def get_seed_tuple(self, *, data_context: ray.data.DataContext):
        epoch = ray.get(self.clock.get.remote())
        fixed = RandomSeedConfig(epoch_seed(self.seed, epoch), reseed_after_execution=False)
        return fixed.get_seed_tuple(data_context=data_context)


def start_epoch_clock() -> ray.actor.ActorHandle:
    """An EpochClock on the driver's node (the head node under `ray job submit`), the node a run is
    least likely to lose; anywhere else if that node has no room."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return EpochClock.options(scheduling_strategy=here).remote()


def read_dataset_info(folder: str) -> dict[str, Any]:
    """dataset_info.json of a prepared folder, local or remote (s3://, gs://, ...): on an object
    store the one of the generation that the prefix's marker names (publish.live_folder)."""
    live = live_folder(folder)
    try:
        return storage.read_json(storage.join(live, INFO_FILE))
    except (FileNotFoundError, OSError):
        raise DataError(
            f"{folder}: no dataset_info.json; pass a folder written by `python -m raymc.prepare` or an NYU .mat file"
        ) from None


def split_files(folder: str, split: str) -> list[str]:
    """The prepared folder's shards that hold only `split`'s rows (`<split>-NNNNN.parquet`), as
    paths or URIs; reading them alone skips the other split's bytes."""
    return _parquet_files(folder, prefix=f"{split}-")


def _parquet_files(folder: str, *, prefix: str = "") -> list[str]:
    """The live folder's Parquet files whose names start with `prefix`, sorted, as paths or URIs."""
    live = live_folder(folder)
    return [storage.join(live, n) for n in storage.names(live) if n.startswith(prefix) and n.endswith(".parquet")]


def damaged_shard_behind(failure: str, source: DataSource) -> DataError | None:
    """The error naming the damaged shard of `source` behind a failure of Ray Data (its text), if
    one is: when the failure says pyarrow's Parquet reader failed, every page is verified."""
    if not source.prepared or not shards.PARQUET_READ_FAILURE.search(failure):
        return None
    return shards.damaged_shard(source.kind, _parquet_files(source.location))


@contextlib.contextmanager
def naming_damaged_shards(source: DataSource) -> Iterator[None]:
    """Around reading `source` with Ray Data: a read that failed on a damaged shard raises the
    DataError naming it instead."""
    try:
        yield
    except Exception as exc:
        damage = damaged_shard_behind(str(exc), source)
        if damage is None:
            raise
        raise damage from exc


def dataset_info(source: DataSource) -> dict[str, Any]:
    """dataset_info.json of a prepared folder, or the same facts scanned from an ImageFolder."""
    if source.prepared:
        return read_dataset_info(source.location)
    return imagenet.folder_info(source.folder_index)


def val_split(info: dict[str, Any]) -> str:
    """NYU calls its held-out split "test", ImageNet "val"."""
    return "val" if "val" in info["counts"] else "test"


def data_spec(info: dict[str, Any]) -> DataSpec:
    """The streams and class list a data set provides."""
    try:
        counts = info["counts"]
        streams = [RGB_STREAM]
        if info.get("dataset") == "nyu":
            streams.append(StreamSpec("depth", (info["depth_mean"],), (info["depth_std"],), missing_is_zero=True))
        return DataSpec(
            classes=tuple(info["classes"]),
            streams=tuple(streams),
            num_train=sum(counts.get(TRAIN_SPLIT, {}).values()),
            num_val=sum(counts.get(val_split(info), {}).values()),
            val_split=val_split(info),
        )
    except KeyError as exc:
        raise DataError(f"dataset_info.json lacks key {exc}; prepare the data again with raymc.prepare") from None


def _chunks(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """A block's rows PREPROCESS_BATCH at a time."""
    rows = len(batch["label"])
    for start in range(0, rows, PREPROCESS_BATCH):
        yield {key: values[start : start + PREPROCESS_BATCH] for key, values in batch.items()}


Rows = dict[str, np.ndarray]


def _decoded(chunk: Rows, decode: Callable[[Rows], Rows] | None) -> Rows:
    """ImageNet rows decoded (to pixels, or to bytes and header for --decode-on device); NYU rows
    (decode None) already hold pixels."""
    return chunk if decode is None else decode(chunk)


def _decode_block(block: Rows, *, decode: Callable[[Rows], Rows]) -> Iterator[Rows]:
    """Decoded rows of a block, for --cache (augmentation then runs on the cached rows)."""
    for chunk in _chunks(block):
        yield _decoded(chunk, decode)


def _train_view(
    block: Rows,
    *,
    clock,
    seed: int,
    image_size: int,
    crop_scale: float,
    decode: Callable[[Rows], Rows] | None,
    augment: Callable[..., Rows],
) -> Iterator[Rows]:
    """Decode (where `decode` says how) and augment a whole read block, yielding it in chunks:
    `augment` is augment_batch, or device_decode.sample_batch, which only draws the parameters."""
    epoch = ray.get(clock.get.remote())
    for chunk in _chunks(block):
        rows = _decoded(chunk, decode)
        if len(rows["label"]):  # every image of the chunk was undecodable and skipped
            yield augment(rows, seed=seed, epoch=epoch, image_size=image_size, crop_scale=crop_scale)


def _eval_view(
    block: Rows, *, image_size: int, resize: int | None, decode: Callable[[Rows], Rows] | None
) -> Iterator[Rows]:
    """Decode and centre-crop a whole read block, yielding it in chunks, each row keeping its index."""
    for chunk in _chunks(block):
        rows = _decoded(chunk, decode)
        if len(rows["label"]):
            yield {**eval_batch(rows, image_size=image_size, resize=resize), "index": np.asarray(rows["index"])}


def stored_rows(
    source: DataSource,
    spec: DataSpec,
    split: str,
    config: TrainConfig,
    *,
    shuffle: FileShuffleConfig | None = None,
    remote_args: dict[str, Any] | None = None,
) -> ray.data.Dataset:
    """One split's rows as stored: {rgb, [depth], label, index} for NYU, {image bytes or path,
    label, index} for ImageNet. `shuffle` orders a prepared folder's shards anew for each pass
    (training's: EpochFileShuffle); without it they are read in the stored order. Under
    --deterministic every pass of the rows and of what is built on them (--cache's
    materialization included) keeps their order. `remote_args` place the read tasks
    (raymc.resources.data_task_options)."""
    rows = _stored_rows(source, spec, split, config, shuffle, remote_args or {})
    rows.context.execution_options.preserve_order = config.deterministic  # the dataset's own context
    return rows


def _stored_rows(
    source: DataSource,
    spec: DataSpec,
    split: str,
    config: TrainConfig,
    shuffle: FileShuffleConfig | None,
    remote_args: dict[str, Any],
) -> ray.data.Dataset:
    # Imported here, on the driver: ray_compat imports Ray Tune, which the Ray Data workers that
    # import this module for its views do not need (1.5 s and 190 MB each, measured).
    from raymc.ray_compat import parquet_reader_v1

    if not source.prepared:
        seed = config.seed if split == TRAIN_SPLIT else None
        return imagenet.image_folder_dataset(source.folder_index, split, seed=seed)
    columns = ["label", "index", "split", *(s.column for s in spec.streams)]
    if source.kind == "imagenet":
        # path names undecodable images; height and width spare --decode-on device a header parse
        columns = ["label", "index", "split", "image", "path", "height", "width"]
    files = split_files(source.location, split)
    mixed = not files  # a folder whose shards mix splits (prepared by raymc 0.1 before per-split files)
    if mixed:
        files = _parquet_files(source.location)
    shards.check_shards(source.kind, files)
    # One block per shard, so each shard is read, decoded and augmented in one task (more blocks
    # than files would make Ray split the read's output and run the view as separate tasks).
    # On an object store, raymc's filesystem (timeouts, bounded retries) with paths inside it.
    filesystem = storage.ray_location(source.location)[1]
    paths = files or [storage.as_uri(source.location)]
    with parquet_reader_v1(), naming_damaged_shards(source):  # Ray reads a first batch here
        rows = ray.data.read_parquet(
            [storage.within(path) for path in paths] if filesystem else paths,
            filesystem=filesystem,
            shuffle=shuffle,
            override_num_blocks=len(files) or None,
            ray_remote_args=remote_args,
            fragment_scan_options=shards.SCAN_OPTIONS,
        )
    rows = rows.select_columns(columns)
    if mixed:
        rows = rows.filter(expr=col("split") == split)
    return rows


def _decoder(source: DataSource, split: str, config: TrainConfig) -> Callable[[Rows], Rows] | None:
    """How Ray Data decodes ImageNet's encoded images (None: NYU rows hold pixels): to pixels, or
    for training with --decode-on device to their bytes and header (the worker decodes them)."""
    if source.kind != "imagenet":
        return None
    if split == TRAIN_SPLIT and config.decode_on == "device":
        return functools.partial(device_decode.encoded_batch, on_bad_image=config.on_bad_image)
    # Draft decoding (1/2, 1/4, 1/8 scale) only where the view is resized down anyway.
    draft_size = None if split == TRAIN_SPLIT else val_short_side(config.image_size, config.val_resize)
    return functools.partial(imagenet.decode_batch, on_bad_image=config.on_bad_image, draft_size=draft_size)


def _view(rows: ray.data.Dataset, fn: Callable, remote_args: dict[str, Any], **fn_kwargs: Any) -> ray.data.Dataset:
    """`fn` over whole blocks (batch_size=None): Ray Data then fuses it into the read task, so
    full-resolution pixels never pass through the object store; `fn` yields PREPROCESS_BATCH rows
    at a time, so a task holds one chunk of decoded pixels at a time. Ray Data gathers the
    yielded chunks into output blocks of up to `target_max_block_size` (128 MiB), so a shard's
    rows reach the consumer when its task ends (measured in bench/RESULTS.md: smaller blocks
    brought the first batch sooner but lowered throughput). `remote_args` must be the read's, or
    Ray Data would not fuse the two."""
    return rows.map_batches(fn, fn_kwargs=fn_kwargs, batch_format="numpy", batch_size=None, **remote_args)


def build_datasets(
    source: DataSource, spec: DataSpec, config: TrainConfig, clock: ray.actor.ActorHandle
) -> dict[str, ray.data.Dataset]:
    """{"train": augmented training rows, "val": centre-cropped validation rows}. With
    --decode-on device the training rows are encoded JPEGs with their drawn parameters, which the
    workers decode and augment (raymc.batches.train_collate).

    With --cache, the decoded training rows and the validation view (the same every epoch) are
    materialized once, so each epoch only augments: no reading or decoding, no validation pipeline.
    """
    from raymc.ray_compat import randomize_block_order  # on the driver only, as in stored_rows

    check_decode_on(config, source.kind)
    on_pool = data_task_options()  # training's reads and views go to the data pool when one is up

    # --cache reads the files once, in their stored order; its block order is shuffled per epoch below.
    shuffle = None if config.cache else EpochFileShuffle(config.seed, clock=clock)
    rows = stored_rows(source, spec, TRAIN_SPLIT, config, shuffle=shuffle, remote_args=on_pool)
    decode = _decoder(source, TRAIN_SPLIT, config)
    val = eval_rows(source, spec, spec.val_split, config, remote_args=on_pool)
    if config.cache:
        if decode is not None:
            rows = _view(rows, _decode_block, on_pool, decode=decode)
            decode = None
        cached = cache_in_object_store(
            {"training rows": (rows, spec.num_train), "validation view": (val, spec.num_val)}
        )
        rows, val = cached["training rows"], cached["validation view"]
    if config.cache or not source.prepared:
        # Rows held in memory (--cache's, or a folder's table of paths) would come in the same block
        # order every pass, leaving only the local shuffle buffer to vary an epoch; Parquet reads
        # get a new file order per epoch from their EpochFileShuffle instead.
        rows = randomize_block_order(rows, EpochBlockOrder(config.seed, clock=clock))
    train = _view(
        rows,
        _train_view,
        on_pool,
        clock=clock,
        seed=config.seed,
        image_size=config.image_size,
        crop_scale=config.crop_scale,
        decode=decode,
        augment=device_decode.sample_batch if config.decode_on == "device" else augment_batch,
    )
    return {"train": train, "val": val}


def eval_rows(
    source: DataSource, spec: DataSpec, split: str, config: TrainConfig, *, remote_args: dict[str, Any] | None = None
) -> ray.data.Dataset:
    """One split's validation view, with each row's `index` as its id: {rgb (N,3,S,S) uint8,
    [depth (N,1,S,S) float32], label, index}. Training validates on it and evaluation and
    prediction read it, so a checkpoint is scored on exactly the preprocessing it was validated on.
    Inference leaves `remote_args` unset: its model actors fuse with the view and belong on the
    nodes with the accelerators, not on the data pool."""
    rows = stored_rows(source, spec, split, config, remote_args=remote_args)
    return _view(
        rows,
        _eval_view,
        remote_args or {},
        image_size=config.image_size,
        resize=config.val_resize,
        decode=_decoder(source, split, config),
    )


def cache_in_object_store(datasets: dict[str, tuple[ray.data.Dataset, int]]) -> dict[str, ray.data.Dataset]:
    """Materialize each of {name: (rows, row count)} once, refusing up front when together they
    would take more than 80% of the cluster's object store."""
    available = ray.cluster_resources().get("object_store_memory", 0)
    needed = {name: _row_bytes(rows) * count for name, (rows, count) in datasets.items()}
    if sum(needed.values()) > 0.8 * available:
        parts = ", ".join(f"{name} {size / 2**30:.1f} GiB" for name, size in needed.items())
        raise ConfigError(
            f"--cache needs about {sum(needed.values()) / 2**30:.1f} GiB of Ray object store ({parts}), but "
            f"the cluster has {available / 2**30:.1f} GiB; drop --cache, or start Ray with a larger "
            f"--object-store-memory (or more nodes)"
        )
    return {name: rows.materialize() for name, (rows, _) in datasets.items()}


def _row_bytes(rows: ray.data.Dataset) -> float:
    """Mean size of a row, from the first few."""
    sample = rows.take(16)
    return float(np.mean([sum(np.asarray(v).nbytes for v in row.values()) for row in sample])) if sample else 0.0
