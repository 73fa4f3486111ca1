"""GPU throughput without Ray: raymc's own training step on synthetic batches, and JPEG decode +
crop on the GPU against the host decoder.

    python bench/gpu_throughput.py                                        # on a CUDA GPU, about 5 minutes
    python bench/gpu_throughput.py --device cpu --image-size 32 --steps 2  # a smoke run on any machine

The GPU machines this runs on have torch and torchvision but no Ray (nor pyarrow, YAML or pandas),
so it imports only raymc's modules that need neither: the step (raymc.step.train_step, which the
training loop runs), the models, the precision choice, the JPEG decoder call (raymc.data.jpeg) and
the training view (raymc.data.augment.TrainView) that --decode-on device applies on the device.

1. Training: sd_resnet50 (raymc's ResNet-50; targets on one H100/H200 >= 3,000 images/s) and
   mc_resnet18 (>= 5,000) at 224 px, bf16 autocast, channels_last, uint8 batches already on the
   device normalized there (raymc.data.spec), SGD with momentum; torch.compile off and on.
   Anchors: NVIDIA's ResNet-50 AMP on one A100 ~2,470 images/s; MLPerf H100 ~7,000 per GPU with DALI.
   Timings synchronize the device around `--steps` steps after `--warmup`; peak GPU memory is
   torch's max_memory_allocated.
2. Decode: `--decode-images` JPEGs of about 500 x 375 (the mean ImageNet image), decoded and
   cropped to the training view on the device in batches (`decode_jpeg(list, device="cuda")`,
   nvJPEG) against the host decoder (libjpeg-turbo, one image at a time on one core, as a Ray Data
   task does) with the same view on the host. Target: device >= 10x the host per image. It also
   prints how far nvJPEG's pixels are from the host decoder's (the bound --decode-on device's
   pixels keep from the host path's on a GPU; on CPUs both paths decode with libjpeg-turbo and
   agree exactly).

Not measured here: the end-to-end figure through Ray Data (a GPU worker fed by Ray Data, and how
long it waits for data) stays open until a GPU node with Ray exists.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from raymc.data.augment import TrainView
from raymc.data.draws import TrainParams
from raymc.data.jpeg import as_tensor, decode_rgb_jpegs
from raymc.data.spec import RGB_STREAM, DataSpec, StreamSpec
from raymc.models import build_model, model_family
from raymc.precision import Precision, autocast_dtype
from raymc.step import StepContext, StepSettings, compile_model, train_step

TARGETS = {"sd_resnet50": 3000.0, "mc_resnet18": 5000.0}  # training images/s on one H100, synthetic
DECODE_TARGET = 10.0  # device decode + crop per image vs the host's
DEPTH = StreamSpec("depth", (2.8,), (1.2,), missing_is_zero=True)  # about NYU's metric depth statistics


@dataclass(frozen=True)
class Figure:
    """One measured arm: its repetitions and a note."""

    arm: str
    metric: str
    values: tuple[float, ...]
    note: str = ""

    def line(self) -> str:
        median, low, high = statistics.median(self.values), min(self.values), max(self.values)
        return (
            f"| {self.arm} | {self.metric} | {median:.4g} | {low:.4g} - {high:.4g} | {len(self.values)} | {self.note} |"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of fn(), the device's queue included."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _precision(device: torch.device) -> Precision:
    """bf16 autocast on a GPU (as raymc's --amp-dtype bf16), fp32 on a CPU (as raymc on CPUs)."""
    if device.type != "cuda":
        return Precision(None)
    return Precision(autocast_dtype("bf16", torch.cuda.get_device_capability(device)))


def step_context(name: str, model: nn.Module, device: torch.device) -> StepContext:
    """raymc.step's context for `model`: SGD, label smoothing 0.1, no mixing, no accumulation."""
    streams = (RGB_STREAM, DEPTH) if "depth" in model_family(name).streams else (RGB_STREAM,)
    precision = _precision(device)
    return StepContext(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.needs_scaler),
        precision=precision,
        spec=DataSpec(classes=tuple(f"c{i}" for i in range(1000)), streams=streams, num_train=0, num_val=0),
        device=device,
        loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1),
        settings=StepSettings(mixup=0.0, cutmix=0.0, mix_switch_prob=0.5, grad_accum_steps=1, grad_clip_norm=None),
    )


def synthetic_batch(spec: DataSpec, *, batch: int, image_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """uint8 RGB (and metric depth) already on the device, as Ray Data delivers them."""
    shape = (batch, 3, image_size, image_size)
    out = {"rgb": torch.randint(0, 256, shape, dtype=torch.uint8, device=device)}
    if len(spec.streams) == 2:
        out["depth"] = torch.rand(batch, 1, image_size, image_size, device=device) * 10
    out["label"] = torch.randint(0, 1000, (batch,), device=device)
    return out


def training(name: str, args: argparse.Namespace, *, compiled: bool) -> Figure:
    """Images/s of raymc's step for `name`, with the peak GPU memory (and compile time) in the note."""
    device = args.device
    torch.manual_seed(0)
    model = build_model(name, num_classes=1000).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # as raymc's loop does on GPUs
    context = step_context(name, compile_model(model, backend=None, device=device) if compiled else model, device)
    batch = synthetic_batch(context.spec, batch=args.batch, image_size=args.image_size, device=device)
    total = args.warmup + args.steps * args.reps

    def steps(first: int, count: int) -> None:
        for step in range(first, first + count):
            train_step(context, batch, step=step, num_steps=total)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm_s = _timed(lambda: steps(0, args.warmup), device)
    rates = [
        args.steps * args.batch / _timed(lambda r=r: steps(args.warmup + r * args.steps, args.steps), device)
        for r in range(args.reps)
    ]
    note = f"batch {args.batch}, {args.image_size} px, {context.precision.dtype or 'fp32'}"
    if device.type == "cuda":
        note += f"; peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
        verdict = "meets" if statistics.median(rates) >= TARGETS[name] else "misses"
        note += f"; {verdict} the target {TARGETS[name]:.0f}"
    if compiled:
        note += f"; compile + warm-up {warm_s:.0f} s"
    return Figure(f"{name} step{' + compile' if compiled else ''}", "images/s", tuple(rates), note)


def jpeg_files(count: int, *, size: tuple[int, int] = (500, 375), quality: int = 90) -> list[bytes]:
    """`count` JPEGs of about `size` (each side +-20%): smooth shading, edges and noise, which
    decode about as photographs do (pure noise would be far slower, flat colour far faster)."""
    rng = np.random.default_rng(0)
    files = []
    for _ in range(count):
        width, height = (int(s * rng.uniform(0.8, 1.2)) for s in size)
        y, x = np.mgrid[0:height, 0:width] / max(height, width)
        base = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), x * y], -1)
        pixels = 127 + 100 * base + rng.normal(0, 8, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
        files.append(buffer.getvalue())
    return files


def decoding(args: argparse.Namespace) -> list[Figure]:
    """Images/s of decode + training view on the device (batches) and on the host (one by one),
    and how far the device decoder's pixels are from the host's."""
    device, view = args.device, TrainView(args.image_size, 0.08)
    files = jpeg_files(args.decode_images)
    encoded = [as_tensor(data) for data in files]
    heights, widths = np.asarray(_sizes(files)).T
    drawn = view.sample(0, 1, np.arange(len(files)), heights, widths)
    params = [TrainParams.at(drawn, i) for i in range(len(files))]

    def on_device() -> None:
        for start in range(0, len(encoded), args.decode_batch):
            images = decode_rgb_jpegs(encoded[start : start + args.decode_batch], device=device)
            torch.stack([view.apply(p, image)[0] for p, image in zip(params[start:], images, strict=False)])

    def on_host() -> None:
        for p, data in zip(params, encoded, strict=True):
            view.apply(p, decode_rgb_jpegs([data])[0])

    torch.set_num_threads(1)  # the host decoder as a Ray Data task runs it: one core
    on_device()  # warm-up: nvJPEG's handles and buffers
    device_rates = [len(files) / _timed(on_device, device) for _ in range(args.reps)]
    host_rates = [len(files) / _timed(on_host, torch.device("cpu")) for _ in range(args.reps)]
    speedup = statistics.median(device_rates) / statistics.median(host_rates)
    note = f"device / host {speedup:.1f}x"
    if device.type == "cuda":
        note += f" ({'meets' if speedup >= DECODE_TARGET else 'misses'} the {DECODE_TARGET:.0f}x target)"
    figures = [
        Figure(f"JPEG decode + crop on {device.type}, batches of {args.decode_batch}", "images/s", tuple(device_rates)),
        Figure(
            "JPEG decode + crop on the host, one core",
            "images/s",
            tuple(host_rates),
            note,
        ),
    ]
    differences = [
        (decode_rgb_jpegs([data], device=device)[0].cpu().int() - decode_rgb_jpegs([data])[0].int()).abs()
        for data in encoded[: args.decode_batch]
    ]
    largest = max(float(d.max()) for d in differences)
    mean = statistics.mean(float(d.float().mean()) for d in differences)
    figures.append(
        Figure(
            f"decoded pixels, {device.type} vs host decoder",
            "max abs difference (levels)",
            (largest,),
            f"mean {mean:.3f}",
        )
    )
    return figures


def _sizes(files: list[bytes]) -> list[tuple[int, int]]:
    """(height, width) of each JPEG from its header."""
    return [Image.open(io.BytesIO(data)).size[::-1] for data in files]


def run(args: argparse.Namespace) -> list[Figure]:
    torch.backends.cudnn.benchmark = args.device.type == "cuda"  # as raymc's loop does
    figures = []
    for name in args.models:
        for compiled in (False, True) if args.compile else (False,):
            figures.append(training(name, args, compiled=compiled))
            print(figures[-1].line(), flush=True)
            if args.device.type == "cuda":
                torch.cuda.empty_cache()
    for figure in decoding(args):
        figures.append(figure)
        print(figure.line(), flush=True)
    return figures


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=torch.device, default=torch.device("cuda"), help="cuda (default) or cpu")
    parser.add_argument("--models", nargs="+", default=list(TARGETS), choices=tuple(TARGETS))
    parser.add_argument("--batch", type=int, help="images per step (default 256 on GPUs, 4 on CPUs)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repetition")
    parser.add_argument(
        "--warmup", type=int, help="untimed steps first: compilation, cuDNN's autotuner (default 10 on GPUs, 1 on CPUs)"
    )
    parser.add_argument("--reps", type=int, help="repetitions of each figure (default 3 on GPUs, 1 on CPUs)")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, help="also time torch.compile (default: on GPUs)"
    )
    parser.add_argument("--decode-images", type=int, help="JPEGs to decode (default 1024 on GPUs, 8 on CPUs)")
    parser.add_argument(
        "--decode-batch", type=int, help="JPEGs per device decode call (default 256 on GPUs, 4 on CPUs)"
    )
    return parser


# (GPU, CPU) defaults: a full measurement on a GPU, a smoke run that takes seconds on a CPU.
DEFAULTS = {"batch": (256, 4), "warmup": (10, 1), "reps": (3, 1), "decode_images": (1024, 8), "decode_batch": (256, 4)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = get_args_parser().parse_args(argv)
    on_gpu = args.device.type == "cuda"
    if args.compile is None:
        args.compile = on_gpu
    for name, (gpu, cpu) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, gpu if on_gpu else cpu)
    for name in ("image_size", "steps", *DEFAULTS):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to measure (--device cpu runs a small smoke version)")
        return 0
    gpu = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "no GPU"
    print(f"{gpu}; torch {torch.__version__}; {args.device}")
    print("| arm | metric | median | min - max | n | note |\n| --- | --- | ---: | ---: | ---: | --- |", flush=True)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
