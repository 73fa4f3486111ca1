"""NYU Depth V2 ingest: raymc's Ray Data pipeline against the seed plan's h5py Dataset + DataLoader.

    python bench/nyu_ingest.py --quick     # 512 demo frames at 480 x 640 (~280 training rows)

raymc: the prepared Parquet shards -> `build_datasets(...)["train"]` (paired crop + flip, RGB jitter,
in Ray Data tasks) -> `iter_torch_batches` as the training loop calls it, consumed here; once
streaming the shards every epoch (the default), once with `--cache` (decoded rows kept in Ray's
object store, read from the shards once; its one-off cost is reported apart).
Seed plan: a torch Dataset that opens the .mat with h5py and reads `images[i]` and `depths[i]` in
every `__getitem__`, run by a DataLoader. Both do the same per-sample work (raymc's own
`augment_batch`, seeded by the same (seed, epoch, index), so the crops are identical) on the same
training rows, with the same batch size and the same number of CPU processes (Ray's CPUs =
DataLoader workers). The demo .mat has the real file's resolution and layout: chunked across
samples and deflated as MATLAB writes v7.3 files, so each per-sample read inflates a whole chunk.
Epochs of the two alternate, so that a change in machine load hits both. Preparing the Parquet
shards is a one-off and is reported apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import common  # first: it binds a local Ray to 127.0.0.1 before ray is imported
import h5py
import numpy as np
import pyarrow.parquet as pq
import torch
from common import Epoch, Row
from torch.utils.data import DataLoader, Dataset

from raymc.config import TrainConfig
from raymc.data.augment import augment_batch
from raymc.data.demo import write_demo_nyu
from raymc.data.nyu_prepare import prepare_nyu
from raymc.data.pipeline import DataSource, build_datasets, data_spec, dataset_info, start_epoch_clock

BENCH = "nyu ingest"
SEED = 0
CROP_SCALE = 0.08


class SeedNyuDataset(Dataset):
    """The seed plan's reader: one h5py read of `images[i]` and `depths[i]` per sample (each copies
    the whole HDF5 chunk it lies in), then raymc's per-sample training transforms."""

    def __init__(self, mat: Path, indices: np.ndarray, labels: np.ndarray, *, image_size: int) -> None:
        self.mat, self.indices, self.labels, self.image_size = str(mat), indices, labels, image_size
        self.epoch = 0  # set before each epoch; DataLoader workers are forked afresh per epoch
        self._file: h5py.File | None = None  # opened lazily, once per worker process

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self._file is None:
            self._file = h5py.File(self.mat, "r")
        i = int(self.indices[k])
        rgb = self._file["images"][i].transpose(2, 1, 0)  # h5py shows (3, W, H): -> H x W x 3
        depth = self._file["depths"][i].T
        row = {"rgb": rgb[None], "depth": depth[None], "label": self.labels[k : k + 1], "index": np.array([i])}
        view = augment_batch(row, seed=SEED, epoch=self.epoch, image_size=self.image_size, crop_scale=CROP_SCALE)
        return torch.from_numpy(view["rgb"][0]), torch.from_numpy(view["depth"][0]), int(self.labels[k])


def make_data(frames: int, height: int, width: int) -> tuple[Path, Path, float]:
    """(demo .mat, its prepared Parquet folder, seconds spent preparing now), cached."""
    stem = f"nyu_demo_n{frames}_{height}x{width}_deflate"
    mat, _ = common.cached(
        common.cache_dir() / f"{stem}.mat",
        lambda p: write_demo_nyu(p, n=frames, seed=SEED, height=height, width=width),
        in_child=True,
    )
    prepared, prepare_s = common.cached(
        common.cache_dir() / f"{stem}_prepared", lambda p: prepare_nyu(mat, p, seed=SEED)
    )
    return mat, prepared, prepare_s


def train_rows(prepared: Path) -> tuple[np.ndarray, np.ndarray]:
    """(index, label) of the training rows, the same rows raymc's training dataset holds."""
    tables = [pq.read_table(f, columns=["index", "label", "split"]) for f in sorted(prepared.glob("*.parquet"))]
    index = np.concatenate([t["index"].to_numpy() for t in tables])
    label = np.concatenate([t["label"].to_numpy() for t in tables])
    split = np.concatenate([t["split"].to_numpy(zero_copy_only=False) for t in tables])
    train = split == "train"
    return index[train], label[train]


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, float]]:
    with common.ray_session(args.cpus) as ray_start_s:
        mat, prepared, prepare_s = make_data(args.frames, args.height, args.width)
        indices, labels = train_rows(prepared)
        dataset = SeedNyuDataset(mat, indices, labels, image_size=args.image_size)
        loader = DataLoader(
            dataset,
            batch_size=args.batch,
            shuffle=True,
            drop_last=True,
            num_workers=args.cpus,
            generator=torch.Generator().manual_seed(SEED),
        )
        source = DataSource("nyu", str(prepared))
        config = TrainConfig(
            data=str(prepared), image_size=args.image_size, batch=args.batch, seed=SEED, crop_scale=CROP_SCALE
        )
        spec = data_spec(dataset_info(source))
        clock = start_epoch_clock()
        train = build_datasets(source, spec, config, clock)["train"]
        with common.stopwatch() as cache_s:
            cached = build_datasets(source, spec, dataclasses.replace(config, cache=True), clock)["train"]

        def seed_epoch(epoch: int) -> Epoch:
            dataset.epoch = epoch  # DataLoader workers are forked afresh per epoch and see it
            return common.loader_epoch(loader, epoch=epoch)

        arms = {
            "seed": seed_epoch,
            "raymc": lambda e: common.ray_data_epoch(train, clock, batch=args.batch, epoch=e),
            "cached": lambda e: common.ray_data_epoch(cached, clock, batch=args.batch, epoch=e),
        }
        results = common.interleave(arms, args.reps)  # the clock actor ends with its last handle
    seed, raymc_, cached_ = results["seed"], results["raymc"], results["cached"]
    setup = (
        f"{len(indices)} train rows {args.height}x{args.width} -> {args.image_size}, batch {args.batch}, "
        f"{args.cpus} CPUs"
    )
    note = f"prepare {prepare_s:.1f} s (one-off; 0 = cached)"
    if ray_start_s is not None:
        note += f"; Ray start {ray_start_s:.1f} s"
    rows = [
        Row.throughput(BENCH, "seed: h5py Dataset + DataLoader", seed, setup, workers="loader_workers"),
        Row.throughput(BENCH, "raymc: Parquet -> Ray Data", raymc_, note, workers="ray_workers"),
        Row.throughput(
            BENCH,
            "raymc --cache: object store -> Ray Data",
            cached_,
            f"{cached_.per_second.ratio(seed.per_second):.2f}x the seed; caching {cache_s():.1f} s (one-off)",
            workers="ray_workers",
        ),
    ]
    return rows, {"nyu": raymc_.per_second.ratio(seed.per_second)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames (under 3 minutes on 2 cores)")
    parser.add_argument("--frames", type=int, help="demo frames in the .mat (default 512 quick, 1449 = real count)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--image-size", type=int, default=224, help="crop side fed to the model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2, help="Ray's CPUs = DataLoader workers")
    parser.add_argument("--reps", type=int, default=3, help="timed epochs of each (after one warm-up)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = get_args_parser().parse_args(argv)
    if args.frames is None:
        args.frames = 512 if args.quick else 1449
    return args


if __name__ == "__main__":
    sys.exit(common.main(run, parse_args))
