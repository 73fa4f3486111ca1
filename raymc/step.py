"""One training step, importable without Ray: the loop (raymc.loop) runs it on every batch, and
bench/gpu_throughput.py on synthetic batches on a GPU machine that has no Ray, so the benchmark
times raymc's own step, not a copy.

It takes what it needs explicitly (`StepContext`), needs only torch and torchvision, and never
waits for the device: the loss and the batch's [loss sum, correct, samples] stay device tensors
that the loop looks at every --log-every-steps steps (raymc.loss_window).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from raymc.data.augment import mix_batch
from raymc.data.spec import DataSpec, to_model_inputs
from raymc.precision import Precision

if TYPE_CHECKING:
    from raymc.config import TrainConfig
    from raymc.ema import WeightAverage


COMPILE_BACKENDS = {"cuda": "inductor", "cpu": "aot_eager"}  # inductor on CPUs compiles for minutes


def compile_model(model: nn.Module, *, backend: str | None, device: torch.device) -> nn.Module:
    """torch.compile of what trains, with `backend` (--compile-backend) or the device's default."""
    return torch.compile(model, backend=backend or COMPILE_BACKENDS.get(device.type, "inductor"))


@dataclass(frozen=True)
class StepSettings:
    """The settings a step reads (TrainConfig's fields of the same names)."""

    mixup: float
    cutmix: float
    mix_switch_prob: float
    grad_accum_steps: int
    grad_clip_norm: float | None

    @classmethod
    def from_config(cls, config: TrainConfig) -> StepSettings:
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class StepContext:
    """Everything a step reads or moves forward; none of it is Ray's."""

    model: nn.Module  # what trains: compiled and DistributedDataParallel-wrapped where the loop does so
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    spec: DataSpec
    device: torch.device
    loss_fn: nn.Module
    settings: StepSettings
    scheduler: LRScheduler | None = None  # stepped once per optimizer step
    ema: WeightAverage | None = None  # --ema-decay's average, updated after each optimizer step


def train_step(
    context: StepContext, batch: dict[str, torch.Tensor], *, step: int, num_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward batch `step` (0-based) of an epoch of `num_steps`; the optimizer steps
    every --grad-accum-steps batches and at the epoch's end. Returns (loss, [loss sum, correct,
    samples] of the batch), both on the device."""
    c, settings, device = context, context.settings, context.device
    inputs = to_model_inputs(batch, c.spec, device, channels_last=device.type == "cuda")
    labels = batch["label"].to(device, non_blocking=True)
    targets: torch.Tensor = labels
    if settings.mixup > 0 or settings.cutmix > 0:
        inputs, targets = mix_batch(
            inputs,
            labels,
            mixup_alpha=settings.mixup,
            cutmix_alpha=settings.cutmix,
            switch_prob=settings.mix_switch_prob,
            num_classes=c.spec.num_classes,
        )
    sync_now = (step + 1) % settings.grad_accum_steps == 0 or step + 1 == num_steps
    no_sync = getattr(c.model, "no_sync", contextlib.nullcontext)  # DDP: all-reduce only when stepping
    with contextlib.nullcontext() if sync_now else no_sync():
        with c.precision.autocast(device):
            logits = c.model(*inputs)
            loss = c.loss_fn(logits.float(), targets)
        c.scaler.scale(loss / settings.grad_accum_steps).backward()
    if sync_now:
        optimizer_step(c)
    totals = torch.stack(
        [
            loss.detach().double() * labels.shape[0],
            (logits.argmax(1) == labels).sum().double(),
            torch.full((), labels.shape[0], dtype=torch.float64, device=device),  # a fill: no host-to-device copy
        ]
    )
    return loss, totals


def optimizer_step(context: StepContext) -> None:
    """Clip (--grad-clip-norm), step the optimizer through the scaler, then the schedule and the average."""
    c = context
    if c.settings.grad_clip_norm:
        c.scaler.unscale_(c.optimizer)
        nn.utils.clip_grad_norm_(c.model.parameters(), c.settings.grad_clip_norm)
    c.scaler.step(c.optimizer)
    c.scaler.update()
    c.optimizer.zero_grad(set_to_none=True)
    if c.scheduler is not None:
        c.scheduler.step()
    if c.ema is not None:
        c.ema.update()
