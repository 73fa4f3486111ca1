"""NYU Depth V2 preparation: the labeled .mat into Parquet shards plus dataset_info.json.

One Ray task per contiguous, chunk-aligned block of samples writes one Parquet file per split, so a
training or validation pass reads only its own rows; dataset_info.json carries the class counts and
the train depth statistics that training normalizes with. prepared_nyu_cache prepares a .mat once
for training straight from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from PIL import Image
from ray.data.extensions import ArrowTensorArray

from raymc import storage
from raymc.cluster import init_ray
from raymc.data import shards
from raymc.data.nyu import (
    DEFAULT_TEST_FRACTION,
    SPLIT_NAMES,
    NyuIndex,
    assign_splits,
    class_names,
    open_mat,
    read_block,
    read_index,
    scene_labels,
    warn_one_sided_classes,
)
from raymc.data.publish import INFO_FILE, check_output, publishing, run_shard_tasks, write_info
from raymc.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SHARD_BYTES = 128 * 2**20  # per Parquet shard: ~60 full-size NYU samples
MIN_SHARDS = 8  # enough Ray tasks to keep a small cluster busy on small files
# Part of prepared_nyu_cache's key, so a cache written in an older layout is prepared again rather
# than reused. 2: one file per shard and split (train-NNNNN.parquet); 1: shards mixing splits.
PREPARED_LAYOUT = 2


# --------------------------------------------------------------------------------------------
# Preparation into Parquet shards (parallel Ray tasks)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardJob:
    """One Ray task: a contiguous block of samples of the .mat into one Parquet file per split."""

    mat: str
    start: int
    stop: int
    split: np.ndarray  # per sample of the block: 'train', 'test' or '' (left out)
    labels: np.ndarray
    scene_types: tuple[str, ...]
    scenes: tuple[str, ...]
    num_classes: int
    size: tuple[int, int]  # (H, W) to store; the source size means no resizing
    out_dir: str  # a local folder or a URI: each task writes its files straight there
    block: int  # files are OUT_DIR/<split>-<block>.parquet


@dataclass(frozen=True)
class ShardStats:
    """What one shard adds to dataset_info.json: class counts and train depth moments."""

    counts: np.ndarray  # (2, num_classes): rows train, test
    depth_sum: float
    depth_sum_sq: float
    depth_count: int
    invalid_depth_pixels: int


def prepare_nyu(
    mat: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: str | os.PathLike | None = None,
    protocol: str = "nyu10",
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    overwrite: bool = False,
    image_size: int | None = None,
) -> dict:
    """Convert the labeled .mat into Parquet shards plus dataset_info.json; return the info.

    `mat` and `out` are local paths or URIs (s3://...). All validation happens before anything is
    written, and `out` never holds a half-written data set (see raymc.data.publish).
    """
    check_output(out, overwrite=overwrite)
    names = class_names(protocol)
    index = read_index(mat)
    size = _output_size(index, image_size)
    labels = scene_labels(index.scene_types, protocol)
    assigned = assign_splits(index, labels, splits=splits, seed=seed, test_fraction=test_fraction)
    warn_one_sided_classes(assigned, labels, names)

    init_ray()
    with publishing(out) as folder:
        jobs = _shard_jobs(index, labels, assigned, len(names), size, folder)
        logger.info("preparing %s: %d samples in %d Ray tasks", mat, index.num_samples, len(jobs))
        stats = run_shard_tasks(_write_shard, jobs)
        info = _dataset_info(
            index, stats, names, size, protocol=protocol, seed=seed, splits=splits, test_fraction=test_fraction
        )
        write_info(folder, info)
    logger.info("prepared %d samples into %s", info["num_samples"], out)
    return info


def _output_size(index: NyuIndex, image_size: int | None) -> tuple[int, int]:
    """(H, W) of the stored images: full resolution, or the shorter side scaled to image_size."""
    if image_size is None:
        return index.height, index.width
    short = min(index.height, index.width)
    if not 1 <= image_size <= short:
        raise ConfigError(
            f"image size {image_size} (key 'image_size') must be between 1 and the shorter side "
            f"{short} of {index.path}; leave it unset to keep full resolution"
        )
    scale = image_size / short
    return max(1, round(index.height * scale)), max(1, round(index.width * scale))


def _shard_jobs(
    index: NyuIndex,
    labels: np.ndarray,
    assigned: np.ndarray,
    num_classes: int,
    size: tuple[int, int],
    folder: str,
) -> list[ShardJob]:
    """Cut the samples into contiguous, chunk-aligned blocks of about SHARD_BYTES each."""
    jobs = []
    for i, (start, stop) in enumerate(_blocks(index)):
        jobs.append(
            ShardJob(
                mat=storage.as_uri(index.path),
                start=start,
                stop=stop,
                split=assigned[start:stop],
                labels=labels[start:stop],
                scene_types=index.scene_types[start:stop],
                scenes=index.scenes[start:stop],
                num_classes=num_classes,
                size=size,
                out_dir=folder,
                block=i,
            )
        )
    return jobs


def _blocks(index: NyuIndex) -> list[tuple[int, int]]:
    """Block bounds: at most SHARD_BYTES of pixels, at least MIN_SHARDS blocks when possible,
    and a whole number of HDF5 chunks each so no chunk is read twice."""
    sample_bytes = index.height * index.width * (3 + 4)
    rows = min(SHARD_BYTES // sample_bytes, math.ceil(index.num_samples / MIN_SHARDS))
    chunk = index.chunk_samples
    rows = max(chunk, math.ceil(max(rows, 1) / chunk) * chunk)
    return [(s, min(s + rows, index.num_samples)) for s in range(0, index.num_samples, rows)]


@ray.remote
def _write_shard(job: ShardJob) -> ShardStats:
    """Read one block, keep the samples in a split, write each split's rows as one Parquet file
    (so a training or validation pass reads only its own rows)."""
    with open_mat(job.mat) as f:
        rgb, depth, cleaned = read_block(f, job.start, job.stop)
    keep = job.split != ""
    rgb, depth = rgb[keep], depth[keep]
    if rgb.shape[1:3] != job.size:
        rgb, depth = _resize(rgb, depth, job.size)
    table = _shard_table(job, keep, rgb, depth)
    for name in SPLIT_NAMES:
        rows = table.filter(pc.equal(table["split"], name))
        if rows.num_rows:
            # Uncompressed: pixels gain nothing from snappy (measured: same size) and decode 2x faster.
            file = storage.join(job.out_dir, f"{name}-{job.block:05d}.parquet")
            shards.write_shard(file, rows, compression="none")
    return _shard_stats(job, keep, depth, int(cleaned[keep].sum()))


def _shard_table(job: ShardJob, keep: np.ndarray, rgb: np.ndarray, depth: np.ndarray) -> pa.Table:
    """Rows of one shard; images as Ray's Arrow tensor extension so they read back as arrays."""
    positions = np.flatnonzero(keep)
    return pa.table(
        {
            "rgb": ArrowTensorArray.from_numpy(rgb, column_name="rgb"),
            "depth": ArrowTensorArray.from_numpy(depth, column_name="depth"),
            "label": pa.array(job.labels[positions], type=pa.int64()),
            "scene_type": pa.array([job.scene_types[i] for i in positions], type=pa.string()),
            "scene": pa.array([job.scenes[i] for i in positions], type=pa.string()),
            "split": pa.array(job.split[positions].tolist(), type=pa.string()),
            "index": pa.array(positions + job.start, type=pa.int64()),
        }
    )


def _shard_stats(job: ShardJob, keep: np.ndarray, depth: np.ndarray, cleaned: int) -> ShardStats:
    """Per-class counts of each split and depth moments over valid (> 0) train pixels."""
    split, labels = job.split[keep], job.labels[keep]
    counts = np.stack([np.bincount(labels[split == name], minlength=job.num_classes) for name in SPLIT_NAMES])
    valid = depth[split == "train"]
    valid = valid[valid > 0].astype(np.float64)
    return ShardStats(
        counts=counts,
        depth_sum=float(valid.sum()),
        depth_sum_sq=float(np.square(valid).sum()),
        depth_count=int(valid.size),
        invalid_depth_pixels=cleaned,
    )


def _resize(rgb: np.ndarray, depth: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize to (H, W): RGB bilinear, depth nearest so holes stay holes and metres stay real."""
    if len(rgb) == 0:
        return rgb, depth
    wh = (size[1], size[0])
    rgb = np.stack([np.asarray(Image.fromarray(x).resize(wh, Image.BILINEAR)) for x in rgb])
    depth = np.stack([np.asarray(Image.fromarray(d).resize(wh, Image.NEAREST)) for d in depth])
    return rgb, depth.astype(np.float32)


def _dataset_info(
    index: NyuIndex,
    stats: list[ShardStats],
    names: tuple[str, ...],
    size: tuple[int, int],
    *,
    protocol: str,
    seed: int,
    splits: str | os.PathLike | None,
    test_fraction: float,
) -> dict:
    """The dataset_info.json that training reads: classes, counts, depth statistics, source."""
    counts = sum(s.counts for s in stats)
    n = sum(s.depth_count for s in stats)
    mean = sum(s.depth_sum for s in stats) / n if n else 0.0
    var = sum(s.depth_sum_sq for s in stats) / n - mean**2 if n else 0.0
    return {
        "dataset": "nyu",
        "protocol": protocol,
        "classes": list(names),
        "num_samples": int(counts.sum()),
        "num_source_samples": index.num_samples,
        "image_height": size[0],
        "image_width": size[1],
        "counts": {
            split: {name: int(c) for name, c in zip(names, row, strict=True)}
            for split, row in zip(SPLIT_NAMES, counts, strict=True)
        },
        "depth_mean": mean,
        "depth_std": math.sqrt(max(var, 0.0)),
        "invalid_depth_pixels": int(sum(s.invalid_depth_pixels for s in stats)),
        "split_source": "official" if splits is not None else "grouped",
        "splits": str(Path(splits).resolve()) if splits is not None else None,
        "test_fraction": None if splits is not None else test_fraction,
        "seed": seed,
        "source": storage.as_uri(index.path),
    }


# --------------------------------------------------------------------------------------------
# Cache for training straight from a .mat
# --------------------------------------------------------------------------------------------


def prepared_nyu_cache(
    mat: str | os.PathLike,
    *,
    splits: str | os.PathLike | None = None,
    protocol: str = "nyu10",
    seed: int = 0,
    cache_dir: str | os.PathLike,
) -> Path:
    """Prepare the .mat once into a cache folder keyed by file identities, protocol, seed and
    PREPARED_LAYOUT, and return that folder; later calls with the same inputs reuse it."""
    key = {
        "layout": PREPARED_LAYOUT,
        "mat": _file_identity(Path(mat), "mat"),
        "splits": _file_identity(Path(splits), "splits") if splits is not None else None,
        "protocol": protocol,
        "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "nyu" / f"{protocol}-seed{seed}-{digest}"
    if (folder / INFO_FILE).is_file():
        logger.info("using prepared NYU data cached in %s", folder)
        return folder
    prepare_nyu(mat, folder, splits=splits, protocol=protocol, seed=seed, overwrite=True)
    return folder


def _file_identity(path: Path, key: str) -> list:
    """(resolved path, size, mtime) so a changed or replaced file gets a new cache entry."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (key '{key}'); check the path")
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]
