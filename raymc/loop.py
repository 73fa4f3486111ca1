"""The training loop every raymc model and dataset runs in, as a Ray Train worker function.

Read top to bottom: set up (model, optimizer, schedule, precision), restore the newest
checkpoint if there is one, then per epoch: train, validate, decide best/stop from metrics
reduced across ranks (so every rank decides the same), report metrics with a checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from raymc import checkpoint
from raymc.analysis import pathway_logits
from raymc.batches import StartedEpoch, training_batches
from raymc.config import TrainConfig
from raymc.data.augment import mixup
from raymc.data.pipeline import DataSpec, to_model_inputs
from raymc.early_stopping import EarlyStopping
from raymc.metrics import confusion_matrix, mean_class_accuracy, topk_correct
from raymc.models import build_model
from raymc.optim import build_optimizer, build_scheduler
from raymc.telemetry import TrainingTelemetry

logger = logging.getLogger("raymc.progress")


@dataclass(frozen=True)
class Precision:
    """Autocast settings for one device: bf16 on GPUs that have it, fp16 on request, else fp32."""

    dtype: torch.dtype | None

    @classmethod
    def choose(cls, device: torch.device, config: TrainConfig) -> Precision:
        if not config.mixed_precision or device.type != "cuda":
            return cls(None)
        if config.amp_dtype == "fp16" or (config.amp_dtype == "auto" and not torch.cuda.is_bf16_supported()):
            return cls(torch.float16)
        return cls(torch.bfloat16)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16


def model_kwargs(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The build_model arguments a config implies."""
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if config.model.startswith("mc_"):
        kwargs.update(fusion=config.fusion, dropout=config.dropout)
    else:
        kwargs.update(sd_mode=config.sd_mode, **({"pL": config.pL} if config.pL is not None else {}))
    return kwargs


def worker_batch(config: TrainConfig, world_size: int) -> int:
    """Each worker's share of the global --batch."""
    return config.batch // world_size


def steps_per_epoch(num_train: int, world_size: int, config: TrainConfig) -> int:
    """Batches each worker sees per epoch: rows are split equally and the last partial batch dropped."""
    return (num_train // world_size) // worker_batch(config, world_size)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


class Diverged(Exception):
    """The training loss stopped being finite; raised on every rank at the same step."""

    def __init__(self, *, epoch: int, step: int) -> None:
        super().__init__(f"the training loss is not finite at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


def _check_finite(loss: torch.Tensor, *, epoch: int, step: int) -> None:
    """Stop every rank at once when any rank's loss is NaN or infinite."""
    bad = (~torch.isfinite(loss.detach())).float()
    if _all_reduce(bad).item() > 0:
        raise Diverged(epoch=epoch, step=step)


def _broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics: each rank's last training forward updated
    its own, and rank 0's are the ones the checkpoint keeps, so every rank validates those."""
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _setup_progress_logging() -> None:
    """One plain line per epoch on the worker's stdout, which Ray forwards to the driver."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    spec: DataSpec,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    device: torch.device,
    num_steps: int,
    epoch: int,
    first_step: int = 0,
    telemetry: TrainingTelemetry,
    on_preemption: Callable[[int], None],
) -> dict[str, float]:
    """One pass over this worker's training batches; returns globally reduced loss, accuracy and data wait.

    Starts at `first_step` when resuming inside an epoch. Raises Diverged, on every rank at the
    same step, when any rank's loss is not finite (GradScaler's skipped fp16 steps have finite
    losses and are not divergence). Every --preemption-check-steps steps it asks Ray Train whether
    a node is about to be preempted and, if so, calls on_preemption(steps done) once.
    """
    model.train()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, samples
    data_wait = 0.0
    optimizer.zero_grad(set_to_none=True)
    iterator = iter(batches)
    preemption_saved = False
    for step in range(first_step, num_steps):
        wait_start = time.perf_counter()
        batch = next(iterator, None)
        step_wait = time.perf_counter() - wait_start
        data_wait += step_wait
        if batch is None:  # fewer rows than planned: undecodable images were skipped
            break
        inputs = to_model_inputs(batch, spec, device, channels_last=device.type == "cuda")
        labels = batch["label"].to(device, non_blocking=True)
        targets: torch.Tensor = labels
        if config.mixup > 0:
            inputs, targets = mixup(inputs, labels, alpha=config.mixup, num_classes=spec.num_classes)
        sync_now = (step + 1) % config.grad_accum_steps == 0 or step + 1 == num_steps
        no_sync = getattr(model, "no_sync", contextlib.nullcontext)
        with contextlib.nullcontext() if sync_now else no_sync():
            with precision.autocast(device):
                logits = model(*inputs)
                loss = loss_fn(logits.float(), targets)
            _check_finite(loss, epoch=epoch, step=step + 1)
            scaler.scale(loss / config.grad_accum_steps).backward()
        if sync_now:
            if config.grad_clip_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        totals += torch.stack(
            [loss.detach().double() * labels.shape[0], (logits.argmax(1) == labels).sum().double(),
             torch.tensor(labels.shape[0], device=device, dtype=torch.float64)]
        )
        telemetry.record_step(
            loss=loss.item(), lr=optimizer.param_groups[-1]["lr"], data_wait_s=step_wait,
            images=labels.shape[0], step_s=time.perf_counter() - wait_start,
        )
        if (step + 1) % config.preemption_check_steps == 0 and not preemption_saved:
            if ray.train.get_preemption_info() is not None:
                on_preemption(step + 1)
                preemption_saved = True
    # Leave the iterator exhausted so Ray Data finishes this epoch's execution cleanly.
    for _ in iterator:
        pass
    loss_sum, correct, count = _all_reduce(totals).tolist()
    return {"train_loss": loss_sum / count, "train_acc": correct / count, "data_wait_s": data_wait}


@torch.no_grad()
def validate(
    model: nn.Module, shard, *, spec: DataSpec, config: TrainConfig, precision: Precision, device: torch.device
) -> tuple[dict[str, float], dict[str, Any]]:
    """Loss, top-1/top-5, mean class accuracy and per-pathway accuracy over every validation row.

    Returns (metrics, evaluation) where evaluation holds the confusion matrix and pathway
    accuracies of this epoch. Runs the unwrapped model in eval mode: no collective calls per
    batch, so ranks may see different numbers of validation batches.
    """
    core = _unwrap(model)
    _broadcast_buffers(core)
    core.eval()
    num_classes = spec.num_classes
    ks = (1, 5) if num_classes >= 5 else (1,)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    sums: dict[str, torch.Tensor] = {}
    per_worker_batch = worker_batch(config, ray.train.get_context().get_world_size())
    for batch in shard.iter_torch_batches(batch_size=per_worker_batch):
        inputs = to_model_inputs(batch, spec, device, channels_last=device.type == "cuda")
        labels = batch["label"].to(device, non_blocking=True)
        with precision.autocast(device):
            outputs = pathway_logits(core, inputs)
        logits = outputs["full"].float()
        counts = {
            "loss": nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
            "samples": torch.tensor(labels.shape[0], device=device, dtype=torch.float64),
            **{f"top{k}": c.double() for k, c in topk_correct(logits, labels, ks=ks).items()},
            **{name: (out.argmax(1) == labels).sum().double() for name, out in outputs.items() if name != "full"},
        }
        for key, value in counts.items():
            sums[key] = sums.get(key, 0) + value
        confusion += confusion_matrix(logits.argmax(1), labels, num_classes)
    pathway_names = [name for name in core_pathways(core) if name != "full"]
    names = ["loss", "samples", *(f"top{k}" for k in ks), *pathway_names]
    packed = torch.stack([torch.as_tensor(sums.get(n, 0.0), device=device, dtype=torch.float64) for n in names])
    reduced = dict(zip(names, _all_reduce(packed).tolist()))
    confusion = _all_reduce(confusion)
    samples = max(reduced["samples"], 1.0)
    metrics = {
        "val_loss": reduced["loss"] / samples,
        "val_acc": reduced["top1"] / samples,
        "val_mean_class_acc": mean_class_accuracy(confusion),
    }
    if 5 in ks:
        metrics["val_acc5"] = reduced["top5"] / samples
    pathways = {"full": metrics["val_acc"]}
    for name in pathway_names:
        metrics[f"val_acc_{name}"] = pathways[name] = reduced[name] / samples
    return metrics, {"confusion": confusion.cpu().tolist(), "pathways": pathways if len(pathways) > 1 else None}


def core_pathways(model: nn.Module) -> list[str]:
    """Pathway names a model's validation reports: 'full' plus '<stream>_only' for two streams."""
    if getattr(model, "num_streams", 1) == 2:
        return ["full", *(f"{name}_only" for name in model.stream_names)]
    return ["full"]


def _log_epoch(epoch: int, epochs: int, metrics: dict[str, float], improved: bool) -> None:
    parts = [f"epoch {epoch}/{epochs}"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_mean_class_acc", "lr", "images_per_s"):
        if key in metrics:
            value = metrics[key]
            parts.append(f"{key} {value:.3g}" if key in ("lr", "images_per_s") else f"{key} {value:.4f}")
    logger.info("  ".join(parts) + ("  *best*" if improved else ""))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. loop_config: {"config": TrainConfig dict, "spec": DataSpec,
    "clock": EpochClock handle, "threads": torch threads per worker, "run_name": str}."""
    config = TrainConfig(**loop_config["config"])
    spec: DataSpec = loop_config["spec"]
    clock = loop_config["clock"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(loop_config["threads"])
    _setup_progress_logging()
    device = ray.train.torch.get_device()
    telemetry = TrainingTelemetry(run=loop_config["run_name"], rank=rank)

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    core = build_model(config.model, **model_kwargs(config, spec.num_classes))
    if device.type == "cuda":
        core = core.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(core)
    core = _unwrap(model)
    torch.manual_seed(config.seed * 1000 + rank)  # different dropout/mixup draws per rank

    num_steps = steps_per_epoch(spec.num_train, world_size, config)
    optimizer = build_optimizer(core, config)
    scheduler = build_scheduler(optimizer, config, math.ceil(num_steps / config.grad_accum_steps))
    precision = Precision.choose(device, config)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)
    stopper = EarlyStopping(config.monitor, config.patience, config.min_delta)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {}
    start_epoch, first_step = 1, 0

    resume_from = ray.train.get_checkpoint()
    if resume_from:
        with resume_from.as_directory() as folder:
            state = checkpoint.load_state(folder)
            best = checkpoint.load_best_model(folder)
            history = checkpoint.load_history(folder)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        stopper = EarlyStopping(**state["early_stopping"])
        start_epoch, first_step = state["epoch"] + 1, state["steps_done"]
        if rank == 0:
            logger.info("resumed from the checkpoint of epoch %d (+%d steps)", state["epoch"], first_step)

    def save_and_report(report: dict[str, float], *, epoch: int, steps_done: int = 0) -> None:
        """Report metrics from every rank; rank 0 attaches the checkpoint (state after `epoch`
        complete epochs plus `steps_done` steps of the next one)."""
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                state = {
                    "model": core.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "steps_done": steps_done,
                    "early_stopping": stopper.state_dict(),
                }
                progress = {"epoch": epoch, "steps_done": steps_done, "stopped_early": stopper.should_stop}
                checkpoint.save(folder, state=state, best_model=best, history=history, progress=progress)
                ckpt = ray.train.Checkpoint.from_directory(folder)
            name = f"checkpoint_epoch_{epoch:04d}" + (f"_step_{steps_done:06d}" if steps_done else "")
            ray.train.report(report, checkpoint=ckpt, checkpoint_dir_name=name)

    def save_before_preemption(steps_done: int) -> None:
        if rank == 0:
            logger.info("a node is about to be preempted: checkpointing after %d steps of the epoch", steps_done)
        last = history[-1] if history else {"epoch": epoch - 1}
        save_and_report({**last, "best_epoch": stopper.best_epoch}, epoch=epoch - 1, steps_done=steps_done)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def begin_epoch(epoch: int) -> StartedEpoch:
        """Point the augmentation at `epoch`, then start Ray Data's pass over its training rows."""
        ray.get(clock.set.remote(epoch))
        batches = training_batches(
            train_shard, batch_size=worker_batch(config, world_size), seed=config.seed, epoch=epoch
        )
        return StartedEpoch(batches)

    upcoming: StartedEpoch | None = None
    for epoch in range(start_epoch, config.epochs + 1):
        if stopper.should_stop:
            break
        batches, upcoming = upcoming or begin_epoch(epoch), None
        telemetry.record_epoch(epoch)
        started = time.perf_counter()
        try:
            train_metrics = train_one_epoch(
                model, batches, spec=spec, config=config, optimizer=optimizer, scheduler=scheduler,
                scaler=scaler, precision=precision, device=device, num_steps=num_steps, epoch=epoch,
                first_step=first_step, telemetry=telemetry, on_preemption=save_before_preemption,
            )
        except Diverged as diverged:
            if rank == 0:
                logger.error(
                    "stopping: %s; the last good checkpoint is that of epoch %d", diverged, epoch - 1
                )
            return
        train_time = time.perf_counter() - started
        if config.cache and epoch < config.epochs:
            # Validation then reads the object store and runs no Ray Data tasks, so the next epoch's
            # pipeline can start now. (Streamed validation would wait for CPUs held by that pipeline's
            # tasks, which stall until training consumes them: 20-45 s a validation, measured.)
            upcoming = begin_epoch(epoch + 1)
        val_metrics, evaluation = validate(model, val_shard, spec=spec, config=config, precision=precision, device=device)
        metrics = {
            "epoch": epoch,
            **train_metrics,
            **val_metrics,
            "lr": optimizer.param_groups[-1]["lr"],
            "epoch_time_s": time.perf_counter() - started,
            "images_per_s": (num_steps - first_step) * config.batch / train_time,
        }
        first_step = 0
        improved = stopper.update(metrics, epoch)
        history.append(metrics)
        if improved:
            best = {
                "state_dict": copy.deepcopy({k: v.detach().cpu() for k, v in core.state_dict().items()}),
                "model": config.model,
                "model_kwargs": model_kwargs(config, spec.num_classes),
                "classes": list(spec.classes),
                "num_params": sum(p.numel() for p in core.parameters()),
                "config": config.to_dict(),
                "epoch": epoch,
                "metrics": metrics,
                **evaluation,
            }
        if rank == 0:
            _log_epoch(epoch, config.epochs, metrics, improved)
        save_and_report(
            {**metrics, "best_epoch": stopper.best_epoch, f"best_{config.monitor}": stopper.best}, epoch=epoch
        )
    if upcoming is not None:  # stopped early: the epoch begun during validation will not run
        upcoming.close()
    if rank == 0 and stopper.should_stop:
        logger.info(
            "early stopping: %s did not improve for %d epochs; best %.4f at epoch %d",
            config.monitor, stopper.patience, stopper.best, stopper.best_epoch,
        )
