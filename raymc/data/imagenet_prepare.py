"""ImageNet preparation: an ImageFolder tree into Parquet shards, dataset_info.json and bad_images.csv.

Per split, a seeded shuffle of the files is cut into chunks, one Ray task and one Parquet file each,
so no shard is one or two classes. Every image is fully decoded once here, so training never meets
a bad file; bad files are left out and listed in bad_images.csv ("skip") or stop the run ("fail").
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
from PIL import Image

from raymc import storage
from raymc.cluster import init_ray
from raymc.data import shards
from raymc.data.imagenet import (
    SPLITS,
    BadImageError,
    ImageFolderIndex,
    ImageRow,
    check_on_bad_image,
    decode_rgb,
    fetch_files,
    is_plain_jpeg,
    load_rgb,
    open_image,
    scan_image_folder,
    shard_rows,
)
from raymc.data.publish import check_output, publishing, run_shard_tasks, write_info
from raymc.errors import ConfigError

logger = logging.getLogger(__name__)

BAD_IMAGES_FILE = "bad_images.csv"
SHARD_SEED = 0  # shards hold a seeded shuffle of each split, so no shard is one or two classes
RESIZED_QUALITY = 90  # JPEG quality of images scaled down to max_side
CONVERTED_QUALITY = 95  # JPEG quality of CMYK, grayscale, PNG, ... images stored as RGB JPEG
# JPEG bytes stored uncompressed: snappy gains nothing on them (same size) and costs 15% more
# CPU to read (bench/RESULTS.md); the small columns keep pyarrow's default, snappy.
SHARD_COMPRESSION = {
    "image": "none",
    **dict.fromkeys(("label", "wnid", "path", "split", "index", "height", "width"), "snappy"),
}


@dataclass(frozen=True)
class ShardJob:
    """One Ray task: a chunk of one split's (shuffled) rows into one Parquet file."""

    root: str
    split: str
    rows: list[ImageRow]
    num_classes: int
    max_side: int | None
    on_bad_image: str
    out_file: str  # a local path or a URI: the task writes it straight there


@dataclass(frozen=True)
class ShardResult:
    """What one shard adds to dataset_info.json and bad_images.csv."""

    split: str
    counts: np.ndarray  # images stored per label
    bad: list[tuple[str, str]]  # (path relative to the data folder, reason)


def prepare_imagenet(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_side: int | None = None,
    on_bad_image: str = "skip",
    overwrite: bool = False,
) -> dict:
    """Convert an ImageFolder tree into Parquet shards, dataset_info.json and bad_images.csv.

    Every image is fully decoded once here, so training never meets a bad file. Shards hold
    encoded images (the original bytes where they already decode to RGB). `out` is a local folder
    or a URI (s3://...); validation happens before anything is written, and `out` never holds a
    half-written data set (see raymc.data.publish).
    """
    check_on_bad_image(on_bad_image)
    _check_max_side(max_side)
    check_output(out, overwrite=overwrite)
    index = scan_image_folder(data_dir)

    init_ray()
    with publishing(out) as folder:
        jobs = _shard_jobs(index, folder, max_side=max_side, on_bad_image=on_bad_image)
        files = sum(len(rows) for rows in index.rows.values())
        logger.info("preparing %s: %d files in %d Ray tasks", index.root, files, len(jobs))
        check = functools.partial(_raise_bad, index.root) if on_bad_image == "fail" else None
        results = run_shard_tasks(_write_shard, jobs, check=check)
        info = _dataset_info(index, results, max_side=max_side, on_bad_image=on_bad_image)
        _write_bad_images(folder, results)
        write_info(folder, info)
    logger.info("prepared %d images into %s (%d bad files left out)", info["num_samples"], out, info["bad_images"])
    return info


def _check_max_side(max_side: int | None) -> None:
    """A stored long side below 32 pixels leaves nothing to crop from."""
    if max_side is not None and max_side < 32:
        raise ConfigError(
            f"max side {max_side} (key 'max_side', flag --max-side) must be at least 32; "
            "leave it unset to keep the original images"
        )


def _shard_jobs(index: ImageFolderIndex, folder: str, *, max_side: int | None, on_bad_image: str) -> list[ShardJob]:
    """Per split, a seeded shuffle of its rows cut into contiguous chunks, one file each."""
    jobs = []
    rng = np.random.default_rng(SHARD_SEED)
    for split in SPLITS:
        rows = index.rows[split]
        shuffled = [rows[i] for i in rng.permutation(len(rows))]
        size = shard_rows(len(rows))
        for n, start in enumerate(range(0, len(rows), size)):
            jobs.append(
                ShardJob(
                    root=str(index.root),
                    split=split,
                    rows=shuffled[start : start + size],
                    num_classes=len(index.classes),
                    max_side=max_side,
                    on_bad_image=on_bad_image,
                    out_file=storage.join(folder, f"{split}-{n:05d}.parquet"),
                )
            )
    return jobs


def _raise_bad(root: str, result: ShardResult) -> None:
    """Under "fail", raise the bad file a shard stopped at, by its full path."""
    if result.bad:
        path, reason = result.bad[0]
        raise BadImageError(storage.join(root, path), reason)


@ray.remote
def _write_shard(job: ShardJob) -> ShardResult:
    """Read, check and (where needed) re-encode a chunk of rows into one Parquet file; under
    "fail" stop at the first bad file and write nothing."""
    keys = ("image", "label", "wnid", "path", "index", "height", "width")
    columns: dict[str, list] = {key: [] for key in keys}
    bad = []
    for row, data in zip(job.rows, fetch_files([row.path for row in job.rows]), strict=True):
        relative = row.path.removeprefix(f"{job.root}/")
        try:
            if isinstance(data, BadImageError):
                raise data
            image, height, width = _stored_image(data, path=row.path, max_side=job.max_side)
        except BadImageError as e:
            bad.append((relative, e.reason))
            if job.on_bad_image == "fail":
                return ShardResult(job.split, np.zeros(job.num_classes, dtype=np.int64), bad)
            continue
        values = (image, row.label, row.wnid, relative, row.index, height, width)
        for key, value in zip(keys, values, strict=True):
            columns[key].append(value)
    if columns["image"]:
        shards.write_shard(job.out_file, _shard_table(columns, job.split), compression=SHARD_COMPRESSION)
    counts = np.bincount(np.asarray(columns["label"], dtype=np.int64), minlength=job.num_classes)
    return ShardResult(job.split, counts, bad)


def _stored_image(data: bytes, *, path: str, max_side: int | None) -> tuple[bytes, int, int]:
    """(JPEG bytes, height, width) to store for one image, checked by a full decode.

    Plain RGB JPEGs within max_side keep their bytes; larger images are scaled down to max_side
    on the long side (JPEG quality 90); CMYK, grayscale, PNG, ... become RGB JPEGs (quality 95),
    so every stored image decodes straight to RGB.
    """
    img = open_image(data, path)
    shrink = max_side is not None and max(img.size) > max_side
    if is_plain_jpeg(img) and not shrink:
        rgb = decode_rgb(data, path=path)
        return data, rgb.shape[0], rgb.shape[1]
    rgb_img = load_rgb(img, path, draft_size=max_side if shrink else None)
    if shrink:
        scale = max_side / max(rgb_img.size)
        size = tuple(max(1, round(s * scale)) for s in rgb_img.size)
        rgb_img = rgb_img.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    rgb_img.save(buffer, "JPEG", quality=RESIZED_QUALITY if shrink else CONVERTED_QUALITY)
    return buffer.getvalue(), rgb_img.height, rgb_img.width


def _shard_table(columns: dict[str, list], split: str) -> pa.Table:
    """One shard's rows with the documented column types."""
    return pa.table(
        {
            "image": pa.array(columns["image"], type=pa.binary()),
            "label": pa.array(columns["label"], type=pa.int64()),
            "wnid": pa.array(columns["wnid"], type=pa.string()),
            "path": pa.array(columns["path"], type=pa.string()),
            "split": pa.array([split] * len(columns["image"]), type=pa.string()),
            "index": pa.array(columns["index"], type=pa.int64()),
            "height": pa.array(columns["height"], type=pa.int64()),
            "width": pa.array(columns["width"], type=pa.int64()),
        }
    )


def _dataset_info(
    index: ImageFolderIndex, results: list[ShardResult], *, max_side: int | None, on_bad_image: str
) -> dict:
    """The dataset_info.json that training reads: classes, counts per split and class, source."""
    counts = {split: np.zeros(len(index.classes), dtype=np.int64) for split in SPLITS}
    for result in results:
        counts[result.split] += result.counts
    return {
        "dataset": "imagenet",
        "classes": list(index.classes),
        "num_samples": int(sum(c.sum() for c in counts.values())),
        "counts": {
            split: {wnid: int(n) for wnid, n in zip(index.classes, row, strict=True)} for split, row in counts.items()
        },
        "num_source_files": sum(len(rows) for rows in index.rows.values()),
        "bad_images": sum(len(r.bad) for r in results),
        "max_side": max_side,
        "on_bad_image": on_bad_image,
        "source": str(index.root),
    }


def _write_bad_images(folder: str, results: list[ShardResult]) -> None:
    """bad_images.csv (path, reason), sorted by path; written even when empty, so its absence
    never has to be interpreted."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "reason"])
    writer.writerows(sorted(b for r in results for b in r.bad))
    storage.write_bytes(storage.join(folder, BAD_IMAGES_FILE), text.getvalue().encode())
