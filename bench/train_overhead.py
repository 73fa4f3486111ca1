"""Training overhead: one epoch of raymc (1 Ray Train worker) against a plain single-process PyTorch
loop with the same model, batch size, optimizer, AMP setting and torch threads.

    python bench/train_overhead.py --quick     # mc_resnet18 on the demo NYU set at 64 px, 1 + 3 epochs

raymc: `run_training` with one worker and `--cache`, its way of holding the data in memory (the
decoded training rows and the validation view in Ray's object store; augmentation still runs every
epoch, in Ray Data tasks beside the worker); it runs once more with --deterministic, whose cost is
reported as a ratio of the two; its history gives each epoch's time (train +
validation) and training images/s; epochs after the first are steady state. Ray's start-up and
`fit()`'s fixed cost (worker group, caching, checkpoints, the controller's 2 s polls) are reported
apart. Plain loop: the same model from `build_model`, the training and validation batches held in
memory as tensors (raymc's own views of epoch 1), SGD with the same settings, a loss `.item()` per
step as any loop logs, validation with plain forward passes; `torch.set_num_threads` equal to the
threads raymc's worker uses. Its epochs run before and after the raymc run (load drift hits both).

The plain loop is timed twice per round. Replaying the same augmented tensors every epoch is the
headline (`overhead`): the least work a loop over data in memory can do. The second time it does
raymc's work too: it holds the decoded training rows and augments them every epoch with raymc's
`augment_batch`, in its own thread as a hand-written loop would, which separates Ray's cost from
the augmentation's (raymc runs the augmentation in Ray Data tasks beside the worker).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Iterable, Iterator

import common  # first: it binds a local Ray to 127.0.0.1 before ray is imported
import ray
import torch
from common import MemoryPeaks, ResourceMeter, Row, stats, stopwatch
from torch import nn

from raymc.config import DEMO_DEFAULTS, TrainConfig
from raymc.data.augment import augment_batch
from raymc.data.pipeline import (
    TRAIN_SPLIT,
    build_datasets,
    data_spec,
    dataset_info,
    start_epoch_clock,
    stored_rows,
)
from raymc.data.sources import resolve_data
from raymc.data.spec import DataSpec, to_model_inputs
from raymc.loop import steps_per_epoch
from raymc.models import build_model, model_kwargs
from raymc.optim import build_optimizer, build_scheduler
from raymc.precision import Precision
from raymc.resources import worker_resources
from raymc.train import run_training

BENCH = "train overhead"


@dataclasses.dataclass
class InMemoryData:
    """What the plain loop holds: raymc's epoch-1 training batches and all validation batches as
    tensors, and the decoded training rows (whole steps only) in batches, to augment every epoch."""

    train: list[dict]
    val: list[dict]
    rows: list[dict]
    spec: DataSpec


def in_memory_data(config: TrainConfig) -> InMemoryData:
    """Everything the plain loop holds, read through raymc's own pipeline (epoch 1's views)."""
    config, source = resolve_data(config)
    spec = data_spec(dataset_info(source))
    clock = start_epoch_clock()
    ray.get(clock.set.remote(1))
    datasets = build_datasets(source, spec, config, clock)
    steps = steps_per_epoch(spec.num_train, 1, config)
    train = list(datasets["train"].iter_torch_batches(batch_size=config.batch, drop_last=True))[:steps]
    val = list(datasets["val"].iter_torch_batches(batch_size=config.batch))
    stored = stored_rows(source, spec, TRAIN_SPLIT, config).drop_columns(["split"])
    rows = list(stored.iter_batches(batch_size=config.batch, batch_format="numpy", drop_last=True))[:steps]
    return InMemoryData(train, val, rows, spec)


def augmented(rows: list[dict], config: TrainConfig, epoch: int) -> Iterator[dict]:
    """One epoch of training batches augmented in this thread, as raymc's Ray Data tasks do."""
    for batch in rows:
        view = augment_batch(
            batch, seed=config.seed, epoch=epoch, image_size=config.image_size, crop_scale=config.crop_scale
        )
        yield {key: torch.from_numpy(value) for key, value in view.items()}


@dataclasses.dataclass
class PlainLoop:
    """What a hand-written loop holds: model, optimizer, schedule, precision, loss."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    loss_fn: nn.Module


def plain_epoch(loop: PlainLoop, train: Iterable[dict], val: list[dict], spec: DataSpec) -> tuple[float, float]:
    """(training seconds, epoch seconds incl. validation) of one epoch of a hand-written loop."""
    device = torch.device("cpu")
    model, optimizer, scheduler, precision, loss_fn = (
        loop.model,
        loop.optimizer,
        loop.scheduler,
        loop.precision,
        loop.loss_fn,
    )
    with stopwatch() as epoch_s:
        model.train()
        with stopwatch() as train_s:
            for batch in train:
                inputs, labels = to_model_inputs(batch, spec, device), batch["label"]
                with precision.autocast(device):
                    loss = loss_fn(model(*inputs).float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss.item()
        model.eval()
        with torch.no_grad():
            for batch in val:
                inputs, labels = to_model_inputs(batch, spec, device), batch["label"]
                with precision.autocast(device):
                    logits = model(*inputs).float()
                nn.functional.cross_entropy(logits, labels, reduction="sum").item()
                (logits.argmax(1) == labels).sum().item()
    return train_s(), epoch_s()


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, float]]:
    with common.ray_session(args.cpus) as ray_start_s, tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            **{**DEMO_DEFAULTS, "image_size": args.image_size, "batch": args.batch, "epochs": 1 + args.reps},
            model=args.model,
            num_workers=1,
            seed=0,
            out=out,
            name="bench-train-overhead",
            cache=True,
        )
        threads = worker_resources(config).torch_threads
        data = in_memory_data(config)
        train, val, spec = data.train, data.val, data.spec
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = build_model(config.model, **model_kwargs(config, spec.num_classes))
        optimizer = build_optimizer(model, config)
        loop = PlainLoop(
            model,
            optimizer,
            build_scheduler(optimizer, config, len(train)),
            Precision.choose(torch.device("cpu"), config),
            nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        )

        def plain_round(epoch: int) -> tuple[tuple[float, float], tuple[float, float]]:
            """(training s, epoch s) of one replaying epoch and of one augmenting epoch."""
            replaying = plain_epoch(loop, train, val, spec)
            return replaying, plain_epoch(loop, augmented(data.rows, config, epoch), val, spec)

        timed: list[tuple[tuple[float, float], tuple[float, float]]] = []
        plain_memory = MemoryPeaks()
        rounds = max(2, (args.reps + 1) // 2)  # plain epochs before and after the raymc run
        with ResourceMeter() as memory:
            plain_round(1)  # warm-up
            timed += [plain_round(epoch) for epoch in range(2, 2 + rounds)]
        plain_memory.merge(memory.peaks)
        torch.set_num_threads(previous_threads)

        with ResourceMeter() as memory, stopwatch() as fit_s:
            result = run_training(config)
        raymc_memory = memory.peaks
        exact = run_training(dataclasses.replace(config, deterministic=True, name="bench-train-overhead-exact"))

        torch.set_num_threads(threads)
        with ResourceMeter() as memory:
            timed += [plain_round(epoch) for epoch in range(2 + rounds, 2 + 2 * rounds)]
        plain_memory.merge(memory.peaks)
        torch.set_num_threads(previous_threads)

    history = result.history
    steady = history[1:]
    images = len(train) * config.batch
    raymc_train = stats([images / row["images_per_s"] for row in steady])
    raymc_epoch = stats([row["epoch_time_s"] for row in steady])
    exact_epoch = stats([row["epoch_time_s"] for row in exact.history[1:]])
    plain_train, plain_epoch_s = stats([r[0] for r, _ in timed]), stats([r[1] for r, _ in timed])
    augmenting_train, augmenting_epoch = stats([a[0] for _, a in timed]), stats([a[1] for _, a in timed])
    wait = sum(row["data_wait_s"] for row in steady) / sum(images / row["images_per_s"] for row in steady)
    fixed = fit_s() - sum(row["epoch_time_s"] for row in history)
    setup = (
        f"{config.model} {config.image_size} px, batch {config.batch}, {len(train)} steps + {len(val)} val batches, "
        f"{threads} torch thread(s), fp32 on CPU"
    )
    rows = [
        Row(BENCH, "plain loop: epoch (train + val)", "s", plain_epoch_s, plain_memory, setup),
        Row(
            BENCH,
            "raymc --cache: epoch (train + val)",
            "s",
            raymc_epoch,
            raymc_memory,
            f"epochs 2-{len(history)}",
            consumer="train_worker",
            workers="ray_workers",
        ),
        Row(
            BENCH,
            "raymc --cache --deterministic: epoch (train + val)",
            "s",
            exact_epoch,
            note=f"{exact_epoch.ratio(raymc_epoch):.2f}x the run without --deterministic",
        ),
        Row(BENCH, "plain loop: training part", "s", plain_train),
        Row(BENCH, "raymc --cache: training part", "s", raymc_train, note=f"data wait {100 * wait:.1f}% of it"),
        Row(
            BENCH,
            "plain loop augmenting each epoch: epoch (train + val)",
            "s",
            augmenting_epoch,
            note=f"raymc's epoch is {raymc_epoch.ratio(augmenting_epoch):.2f}x this one (same work)",
        ),
        Row(BENCH, "plain loop augmenting each epoch: training part", "s", augmenting_train),
        Row(
            BENCH,
            "raymc: fit() start-up + tear-down",
            "s",
            stats([fixed]),
            note="fit() time outside its epochs, caching included",
        ),
    ]
    if ray_start_s is not None:
        rows.append(Row(BENCH, "Ray start-up", "s", stats([ray_start_s])))
    return rows, {"overhead": raymc_epoch.ratio(plain_epoch_s), "deterministic": exact_epoch.ratio(raymc_epoch)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 px crops (under 3 minutes on 2 cores)")
    parser.add_argument("--model", default="mc_resnet18")
    parser.add_argument("--image-size", type=int, help="crop side (default 64 quick, 112 full)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (the worker gets half)")
    parser.add_argument("--reps", type=int, default=3, help="steady-state epochs timed (after one warm-up)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = get_args_parser().parse_args(argv)
    if args.image_size is None:
        args.image_size = 64 if args.quick else 112
    return args


if __name__ == "__main__":
    sys.exit(common.main(run, parse_args))
