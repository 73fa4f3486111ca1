"""GPU training throughput: images/s of ResNet-50 and mc_resnet18 at 224 px with bf16 autocast and
channels_last, from synthetic data on the device, with and without torch.compile; then end to end
through raymc (Ray Data pipeline -> 1 Ray Train GPU worker), with the share of step time spent
waiting for data and the peak GPU memory.

    python bench/gpu_throughput.py --quick     # on a machine with a CUDA GPU; elsewhere it says so and exits 0

Anchors: NVIDIA's ResNet-50 AMP training on one A100 runs about 2,470 img/s; targets on one H100:
ResNet-50 >= 3,000 img/s and mc_resnet18 >= 5,000 img/s from synthetic data.
Synthetic steps feed uint8 batches already on the device through raymc's `to_model_inputs`
(normalize on the device, channels_last), then forward under autocast, loss, backward, SGD step,
as raymc's loop does; timings use CUDA synchronization around `--steps` steps after `--warmup`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import common  # first: it binds a local Ray to 127.0.0.1 before ray is imported
import torch
import torchvision
from common import Row, stats, stopwatch
from torch import nn

from raymc.config import TrainConfig
from raymc.data.demo import write_demo_imagenet, write_demo_nyu
from raymc.data.imagenet_prepare import prepare_imagenet
from raymc.data.nyu_prepare import prepare_nyu
from raymc.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataSpec,
    StreamSpec,
    data_spec,
    read_dataset_info,
    to_model_inputs,
)
from raymc.loop import steps_per_epoch
from raymc.models import MODEL_NAMES, build_model, model_family
from raymc.train import run_training

BENCH = "gpu"
TARGETS = {"resnet50": 3000.0, "sd_resnet50": 3000.0, "mc_resnet18": 5000.0}  # img/s on one H100, synthetic


def _spec(model_name: str) -> DataSpec:
    """Inputs the model takes: RGB, plus metric depth for two-stream models."""
    streams = [StreamSpec("rgb", IMAGENET_MEAN, IMAGENET_STD, scale=255.0)]
    if model_name in MODEL_NAMES and "depth" in model_family(model_name).streams:
        streams.append(StreamSpec("depth", (2.8,), (1.2,), missing_is_zero=True))
    return DataSpec(classes=tuple(f"c{i}" for i in range(1000)), streams=tuple(streams), num_train=0, num_val=0)


def _model(name: str, device: torch.device) -> nn.Module:
    """torchvision's ResNet-50 (the anchors' model) or a raymc model, on the device, channels_last."""
    if name == "resnet50":
        model = torchvision.models.resnet50(num_classes=1000)
    else:
        model = build_model(name, num_classes=1000)
    return model.to(device).to(memory_format=torch.channels_last)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(
    name: str, *, batch: int, steps: int, warmup: int, compiled: bool, device: torch.device | None = None
) -> tuple[float, float, float]:
    """(images/s, peak GPU memory GiB, compile + warm-up seconds) of training steps on device data."""
    device = device or torch.device("cuda")
    torch.manual_seed(0)
    model = _model(name, device)
    spec = _spec(name)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    batch_data = {"rgb": torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=device)}
    if len(spec.streams) == 2:
        batch_data["depth"] = torch.rand(batch, 1, 224, 224, device=device) * 10
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        inputs = to_model_inputs(batch_data, spec, device, channels_last=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(step_model(*inputs).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with stopwatch() as warm_s:
        for _ in range(warmup):
            step()
        _sync(device)
    with stopwatch() as run_s:
        for _ in range(steps):
            step()
        _sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return steps * batch / run_s(), peak, warm_s()


class GpuMemoryPoller:
    """Peak device memory in use (all processes, CUDA contexts included) from nvidia-smi."""

    def __init__(self, interval: float = 0.5) -> None:
        self.peak_mib = 0.0
        self._interval, self._stop = interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"]
        while not self._stop.wait(self._interval):
            try:
                used = float(subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.split()[0])
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                continue
            self.peak_mib = max(self.peak_mib, used)

    def __enter__(self) -> GpuMemoryPoller:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _replicate(root: Path, copies: int) -> None:
    """Hard-link every train image `copies` times under new names: decoding cost, not content, is measured."""
    for path in sorted((root / "train").glob("*/*")):
        for k in range(1, copies):
            target = path.with_name(f"{path.stem}_copy{k}{path.suffix}")
            if not target.exists():
                target.hardlink_to(path)


def demo_imagenet(unique: int, copies: int) -> Path:
    """Prepared Parquet of a demo ImageFolder: 16 classes, `unique` x `copies` JPEGs of ~500 x 375."""

    def write(path: Path) -> None:
        folder = path / "folder"
        write_demo_imagenet(folder, classes=16, per_class=max(1, unique // 16), val_per_class=4, image_size=(500, 375))
        _replicate(folder, copies)
        prepare_imagenet(folder, path / "prepared")

    root, _ = common.cached(common.cache_dir() / f"gpu_imagenet_{unique}x{copies}", write)
    return root / "prepared"


def demo_nyu(frames: int) -> Path:
    """Prepared Parquet of a demo NYU file at the real 480 x 640 resolution."""

    def write(path: Path) -> None:
        path.mkdir(parents=True)
        mat = write_demo_nyu(path / "nyu.mat", n=frames, seed=0, height=480, width=640)
        prepare_nyu(mat, path / "prepared", seed=0)
        mat.unlink()

    root, _ = common.cached(common.cache_dir() / f"gpu_nyu_{frames}", write)
    return root / "prepared"


def end_to_end(
    model: str, data: Path, *, batch: int, epochs: int, cpus_per_worker: float, gpus: float = 1.0
) -> tuple[float, list[float], float]:
    """(share of steady-state training time spent waiting for data, steady-state images/s per
    epoch, peak GPU memory in MiB) of one raymc training run; epoch 1 is warm-up."""
    with tempfile.TemporaryDirectory() as out, GpuMemoryPoller() as memory:
        config = TrainConfig(
            data=str(data),
            model=model,
            image_size=224,
            batch=batch,
            epochs=epochs,
            warmup_epochs=0,
            lr=0.1,
            num_workers=1,
            gpus_per_worker=gpus,
            cpus_per_worker=cpus_per_worker,
            seed=0,
            out=out,
            name=f"bench-gpu-{model}",
        )
        history = run_training(config).history[1:]
    images = steps_per_epoch(data_spec(read_dataset_info(str(data))).num_train, 1, config) * batch
    train_s = sum(images / row["images_per_s"] for row in history)
    wait = sum(row["data_wait_s"] for row in history) / train_s
    return wait, [row["images_per_s"] for row in history], memory.peak_mib


def run(args: argparse.Namespace) -> list[Row]:
    torch.backends.cudnn.benchmark = True
    rows: list[Row] = []
    for name in args.models:
        for compiled in (False, True) if args.compile else (False,):
            values, peak, warm = [], 0.0, 0.0
            for _ in range(args.reps):
                per_s, peak, warm = synthetic(
                    name, batch=args.batch, steps=args.steps, warmup=args.warmup, compiled=compiled
                )
                values.append(per_s)
                torch.cuda.empty_cache()
            s = stats(values)
            verdict = "meets" if s.median >= TARGETS[name] else "misses"
            note = f"peak {peak:.1f} GiB; {verdict} H100 target {TARGETS[name]:.0f}"
            if compiled:
                note += f"; compile + warm-up {warm:.0f} s"
            arm = f"{name} synthetic{' + compile' if compiled else ''}"
            rows.append(Row(BENCH, arm, "img/s", s, note=note))
            print(common.table(rows[-1:]).splitlines()[-1], flush=True)
    with common.ray_session(args.cpus):
        sources = {
            "sd_resnet50": demo_imagenet(args.unique_images, args.copies),
            "mc_resnet18": demo_nyu(args.nyu_frames),
        }
        for model, data in sources.items():
            wait, per_s, peak_mib = end_to_end(
                model, data, batch=args.batch, epochs=args.epochs, cpus_per_worker=args.worker_cpus
            )
            note = f"waits for data {100 * wait:.0f}% of step time; peak GPU memory {peak_mib / 1024:.1f} GiB"
            rows.append(Row(BENCH, f"{model} end to end (raymc, Ray Data)", "img/s", stats(per_s), note=note))
            print(common.table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, no torch.compile, smaller data sets")
    parser.add_argument("--models", nargs="+", default=list(TARGETS), choices=tuple(TARGETS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, help="timed steps per repetition (default 20 quick, 50 full)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, help="also time torch.compile (default: in full runs)"
    )
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--worker-cpus", type=float, default=2.0, help="CPUs of the Train worker (the rest: Ray Data)")
    parser.add_argument("--epochs", type=int, default=3, help="end-to-end epochs (the first is warm-up)")
    parser.add_argument("--unique-images", type=int, default=1024, help="distinct demo JPEGs")
    parser.add_argument("--copies", type=int, help="times each JPEG is repeated (default 4 quick, 16 full)")
    parser.add_argument("--nyu-frames", type=int, help="demo NYU frames at 480 x 640 (default 512 quick, 1449 full)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = get_args_parser().parse_args(argv)
    defaults = {"steps": (20, 50), "compile": (False, True), "copies": (4, 16), "nyu_frames": (512, 1449)}
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.cpus is None:
        args.cpus = os.cpu_count() or 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to measure (run bench/gpu_throughput.py where CUDA exists)")
        return 0
    print(f"{common.machine()}; load average {common.load_average()}", flush=True)
    rows = run(args)
    print(common.table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
