"""ImageNet ingest: raymc's Ray Data pipeline, from the JPEG folder and from prepared Parquet,
against torchvision's ImageFolder + DataLoader.

    python bench/imagenet_ingest.py --quick     # 2,048 JPEGs of about 500 x 375, quality 90

All three decode every JPEG and apply RandomResizedCrop(224, scale=(0.08, 1)) + horizontal flip +
ColorJitter(brightness 0.4, contrast 0.2, saturation 0.2) and deliver uint8 3 x 224 x 224 batches
of the same size, with the same number of CPU processes (Ray's CPUs = DataLoader workers).
The baseline is what a user writes by hand: `ImageFolder` (PIL decode) with torchvision's classic
PIL transforms ending in `PILToTensor` (normalization is left to the device, as raymc does).
The demo folder's two unreadable files are removed first, so that every arm reads the same images
(ImageFolder would stop at them). Epochs of the arms alternate; preparing Parquet is a one-off.

A fourth arm reads the same Parquet with --decode-on device: Ray Data reads the JPEG bytes and draws
each image's crop, flip and jitter, and this process (standing in for a training worker, on its CPU:
there is no GPU here) decodes and augments each batch with raymc.batches.DecodeOnDevice. Its CPU is
reported in three parts: "Ray Data CPU ms" counts the Ray worker processes running Ray Data's tasks
(reading, decoding or parsing headers, drawing and applying the views), "Ray system CPU ms" Ray's
own processes (raylet, GCS, dashboard, agents: scheduling and object transfer, plus their idle
tick), "worker CPU ms" this process (iterating and collating batches; in the device arm also decoding
and augmenting them, which a GPU worker would do with nvJPEG on the GPU instead).

Decoding on this CPU makes the device arm's epochs long, and every Ray worker process ticks over
even when idle (about 0.06 CPU s/s in all, here), so its Ray Data figure carries that tick over a
long epoch. A fifth arm reads the same --decode-on device rows and only counts them, as a GPU
worker that keeps up would leave Ray Data: its Ray Data CPU ms is what reading and drawing cost per
image, the last line's device_decode_cpu_ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import common  # first: it binds a local Ray to 127.0.0.1 before ray is imported
import torch
from common import Row
from PIL import Image
from ray.data.collate_fn import NumpyBatchCollateFn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from raymc.batches import DecodeOnDevice
from raymc.config import TrainConfig
from raymc.data.augment import COLOR_JITTER
from raymc.data.demo import write_demo_imagenet
from raymc.data.imagenet import scan_image_folder
from raymc.data.imagenet_prepare import prepare_imagenet
from raymc.data.pipeline import DataSource, build_datasets, data_spec, dataset_info, start_epoch_clock

BENCH = "imagenet ingest"
SEED = 0
CROP_SCALE = 0.08
IMAGE_SIZE = (500, 375)  # (width, height), each side varied +-20%: about the mean ImageNet image
QUALITY = 90


class LabelsOnly(NumpyBatchCollateFn):
    """A collate step that keeps only the labels: a consumer that never makes Ray Data wait."""

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"label": torch.from_numpy(batch["label"].copy())}


def _drop_unreadable(root: Path) -> None:
    """Remove files PIL cannot fully decode (the demo's truncated JPEG and HTML page)."""
    for path in sorted(root.glob("*/*/*")):
        try:
            with Image.open(path) as img:
                img.load()
        except OSError:  # UnidentifiedImageError is an OSError too
            path.unlink()


def make_data(classes: int, per_class: int) -> tuple[Path, Path, float]:
    """(ImageFolder root, its prepared Parquet folder, seconds spent preparing now), cached."""
    stem = f"imagenet_demo_{classes}x{per_class}_{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}_q{QUALITY}"

    def write(path: Path) -> None:
        write_demo_imagenet(
            path,
            classes=classes,
            per_class=per_class,
            val_per_class=1,
            seed=SEED,
            image_size=IMAGE_SIZE,
            quality=QUALITY,
        )
        _drop_unreadable(path)

    root, _ = common.cached(common.cache_dir() / stem, write, in_child=True)
    prepared, prepare_s = common.cached(common.cache_dir() / f"{stem}_prepared", lambda p: prepare_imagenet(root, p))
    return root, prepared, prepare_s


def baseline_loader(root: Path, *, image_size: int, batch: int, workers: int) -> DataLoader:
    """torchvision ImageFolder + DataLoader with the same augmentation as raymc's training view."""
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size, scale=(CROP_SCALE, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(**COLOR_JITTER),
            transforms.PILToTensor(),
        ]
    )
    folder = datasets.ImageFolder(str(root / "train"), transform=transform)
    return DataLoader(
        folder,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(SEED),
    )


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, float]]:
    with common.ray_session(args.cpus) as ray_start_s:
        root, prepared, prepare_s = make_data(args.classes, args.per_class)
        loader = baseline_loader(root, image_size=args.image_size, batch=args.batch, workers=args.cpus)
        config = TrainConfig(image_size=args.image_size, batch=args.batch, seed=SEED, crop_scale=CROP_SCALE)
        clock = start_epoch_clock()
        sources = {
            "folder": DataSource("imagenet", str(root), folder_index=scan_image_folder(root)),
            "parquet": DataSource("imagenet", str(prepared)),
        }
        trains = {
            name: build_datasets(source, data_spec(dataset_info(source)), config, clock)["train"]
            for name, source in sources.items()
        }
        device_config = dataclasses.replace(config, decode_on="device")
        parquet = sources["parquet"]
        spec = data_spec(dataset_info(parquet))
        trains["parquet_device"] = build_datasets(parquet, spec, device_config, clock)["train"]
        decode_here = DecodeOnDevice(device_config, torch.device("cpu"))
        arms = {
            "dataloader": lambda e: common.loader_epoch(loader, epoch=e),
            "folder": lambda e: common.ray_data_epoch(trains["folder"], clock, batch=args.batch, epoch=e),
            "parquet": lambda e: common.ray_data_epoch(trains["parquet"], clock, batch=args.batch, epoch=e),
            "parquet_device": lambda e: common.ray_data_epoch(
                trains["parquet_device"], clock, batch=args.batch, epoch=e, collate_fn=decode_here
            ),
            "parquet_device_fed": lambda e: common.ray_data_epoch(
                trains["parquet_device"], clock, batch=args.batch, epoch=e, collate_fn=LabelsOnly()
            ),
        }
        results = common.interleave(arms, args.reps)  # the clock actor ends with its last handle
    base = results["dataloader"].per_second
    setup = (
        f"{len(loader.dataset)} JPEGs ~{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} q{QUALITY} -> {args.image_size}, "
        f"batch {args.batch}, {args.cpus} CPUs"
    )
    note = f"prepare {prepare_s:.1f} s (one-off; 0 = cached)"
    if ray_start_s is not None:
        note += f"; Ray start {ray_start_s:.1f} s"
    baseline = "torchvision ImageFolder + DataLoader"
    host, device, fed = results["parquet"], results["parquet_device"], results["parquet_device_fed"]
    rows = [
        Row.throughput(BENCH, baseline, results["dataloader"], setup, workers="loader_workers"),
        Row.throughput(BENCH, "raymc: JPEG folder -> Ray Data", results["folder"], workers="ray_workers"),
        Row.throughput(BENCH, "raymc: Parquet -> Ray Data", host, f"{note}; {_cpu_split(host)}", workers="ray_workers"),
        Row.throughput(
            BENCH,
            "raymc: Parquet -> Ray Data, --decode-on device (decoded here, on the CPU)",
            device,
            _cpu_split(device),
            workers="ray_workers",
        ),
        Row.throughput(
            BENCH,
            "raymc: Parquet -> Ray Data, --decode-on device (batches only counted: a worker that keeps up)",
            fed,
            _cpu_split(fed),
            workers="ray_workers",
        ),
    ]
    ratios = {
        "imagenet_parquet": host.per_second.ratio(base),
        "imagenet_folder": results["folder"].per_second.ratio(base),
        "decode_cpu_ms": host.feeding_cpu_ms_per_sample.median,
        "device_decode_cpu_ms": fed.feeding_cpu_ms_per_sample.median,
    }
    return rows, ratios


def _cpu_split(result: common.ArmResult) -> str:
    """The arm's CPU ms per image: Ray Data's task workers, Ray's system processes and this (the
    training worker's) process, each apart."""
    parts = {
        "Ray Data CPU ms/image": result.feeding_cpu_ms_per_sample,
        "Ray system CPU ms/image": result.system_cpu_ms_per_sample,
        "worker CPU ms/image": result.consumer_cpu_ms_per_sample,
    }
    return ", ".join(f"{name} {s.median:.2f} ({s.min:.2f} - {s.max:.2f})" for name, s in parts.items())


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (under 3 minutes on 2 cores)")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--per-class", type=int, help="train images per class (default 128 quick, 512 full)")
    parser.add_argument("--image-size", type=int, default=224, help="crop side fed to the model")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cpus", type=int, default=2, help="Ray's CPUs = DataLoader workers")
    parser.add_argument("--reps", type=int, default=3, help="timed epochs of each (after one warm-up)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = get_args_parser().parse_args(argv)
    if args.per_class is None:
        args.per_class = 128 if args.quick else 512
    return args


if __name__ == "__main__":
    sys.exit(common.main(run, parse_args))
