"""The training loop every raymc model and dataset runs in, as a Ray Train worker function.

Read top to bottom: set up (model, optimizer, schedule, precision), restore the newest
checkpoint if there is one, then per epoch: train, validate, decide best/stop from metrics
reduced across ranks (so every rank decides the same), report metrics with a checkpoint.
Everything an epoch changes lives in one `LoopState` that the functions below take explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from raymc import checkpoint
from raymc.analysis import pathway_logits
from raymc.batches import StartedEpoch, training_batches
from raymc.config import TrainConfig
from raymc.data.augment import mix_batch
from raymc.data.pipeline import DataSpec, to_model_inputs
from raymc.early_stopping import EarlyStopping
from raymc.ema import WeightAverage
from raymc.metrics import batch_counts, count_keys, mean_class_accuracy
from raymc.models import build_model, model_kwargs
from raymc.optim import build_optimizer, build_scheduler
from raymc.precision import Precision
from raymc.pretrained import initialize
from raymc.quiet import quiet_train_worker
from raymc.steps import Diverged, LossWindow, all_reduce
from raymc.telemetry import TrainingTelemetry

logger = logging.getLogger("raymc.progress")


def worker_batch(config: TrainConfig, world_size: int) -> int:
    """Each worker's share of the global --batch."""
    return config.batch // world_size


def steps_per_epoch(num_train: int, world_size: int, config: TrainConfig) -> int:
    """Batches each worker sees per epoch: rows are split equally and the last partial batch dropped."""
    return (num_train // world_size) // worker_batch(config, world_size)


@dataclass
class LoopState:
    """One worker's training run: what it was given, and what each epoch and step moves forward."""

    config: TrainConfig
    spec: DataSpec
    rank: int
    world_size: int
    device: torch.device
    precision: Precision
    num_steps: int  # training steps per epoch on this worker
    clock: Any  # EpochClock actor handle: tells the augmentation which epoch it is
    train_shard: ray.data.DataIterator
    val_shard: ray.data.DataIterator
    telemetry: TrainingTelemetry
    model: nn.Module  # what trains: DistributedDataParallel-wrapped with several workers
    core: nn.Module  # the model itself: what validates and what checkpoints hold
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)  # best_model.pt's payload (rank 0's; others keep none)
    epoch: int = 1  # the epoch running, or the first to run
    first_step: int = 0  # steps of `epoch` a preempted run had done before it stopped
    resumed_totals: torch.Tensor | None = None  # this rank's [loss sum, correct, samples] of those steps
    pretrained: dict[str, Any] | None = None  # what --pretrained loaded (PretrainedRecord.to_dict), for summary.json
    ema: WeightAverage | None = None  # --ema-decay's average of `core`


def _unwrap(model: nn.Module) -> nn.Module:
    """The model itself, under torch.compile's and DistributedDataParallel's wrappers: what
    validates, averages (--ema-decay) and checkpoints, so saved weights never carry `_orig_mod.`."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


COMPILE_BACKENDS = {"cuda": "inductor", "cpu": "aot_eager"}  # inductor on CPUs compiles for minutes


def compiled(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    """--compile: torch.compile of what trains (the DDP-wrapped model, so DDP's bucketing stays
    visible to the compiler), with --compile-backend or the device's default."""
    if not config.compile:
        return model
    return torch.compile(model, backend=config.compile_backend or COMPILE_BACKENDS.get(device.type, "inductor"))


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


def choose_kernels(*, deterministic: bool, device: torch.device) -> None:
    """--deterministic: torch's deterministic kernels wherever it has them (an op without one warns
    instead of failing the run), and cuDNN's autotuner off (it picks kernels by timing). Otherwise,
    on a GPU, the autotuner on: the crops have one size, so its first-step search pays off."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reads it before its first GEMM
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def start_worker(loop_config: dict[str, Any]) -> LoopState:
    """This worker's model, optimizer, schedule, precision and data shards, before any checkpoint."""
    config = TrainConfig(**loop_config["config"])
    spec: DataSpec = loop_config["spec"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(loop_config["threads"])
    _setup_progress_logging()
    quiet_train_worker()
    device = ray.train.torch.get_device()
    choose_kernels(deterministic=config.deterministic, device=device)
    telemetry = TrainingTelemetry(run=loop_config["run_name"], rank=rank)

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    core = build_model(config.model, **model_kwargs(config, spec.num_classes))
    pretrained = initialize(core, config.pretrained, model_name=config.model, classes=spec.classes)
    if pretrained is not None and rank == 0:
        logger.info(pretrained.log_line())
    if device.type == "cuda":
        core = core.to(memory_format=torch.channels_last)
    model = compiled(ray.train.torch.prepare_model(core), config, device)
    core = _unwrap(model)
    torch.manual_seed(config.seed * 1000 + rank)  # different dropout/mixup draws per rank

    num_steps = steps_per_epoch(spec.num_train, world_size, config)
    optimizer = build_optimizer(core, config)
    precision = Precision.choose(device, config)
    return LoopState(
        config=config,
        spec=spec,
        rank=rank,
        world_size=world_size,
        device=device,
        precision=precision,
        num_steps=num_steps,
        clock=loop_config["clock"],
        telemetry=telemetry,
        train_shard=ray.train.get_dataset_shard("train"),
        val_shard=ray.train.get_dataset_shard("val"),
        model=model,
        core=core,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, math.ceil(num_steps / config.grad_accum_steps)),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.needs_scaler),
        stopper=EarlyStopping(config.monitor, config.patience, config.min_delta),
        pretrained=pretrained.to_dict() if pretrained is not None else None,
        ema=WeightAverage(core, config.ema_decay) if config.ema_decay else None,
    )


def restore(state: LoopState, resume_from: ray.train.Checkpoint) -> None:
    """Continue from a checkpoint: the training state (checkpoint.load_training_state), the history
    and the best model."""
    with resume_from.as_directory() as folder:
        saved = checkpoint.load_state(folder)
        state.best = checkpoint.load_best_model(folder)
        state.history = checkpoint.load_history(folder)
    notes = checkpoint.load_training_state(state, saved)
    if state.rank == 0:
        logger.info("resumed from the checkpoint of epoch %d (+%d steps)", saved["epoch"], state.first_step)
        for note in notes:
            logger.warning("resuming: %s", note)


def save_and_report(
    state: LoopState,
    report: dict[str, float],
    *,
    epoch: int,
    steps_done: int = 0,
    epoch_totals: torch.Tensor | None = None,
) -> None:
    """Report metrics from every rank; rank 0 attaches the checkpoint (state after `epoch`
    complete epochs plus `steps_done` steps of the next one, whose running totals are `epoch_totals`)."""
    with tempfile.TemporaryDirectory() as folder:
        ckpt = None
        # On every rank: it gathers.
        saved = checkpoint.training_state(state, epoch=epoch, steps_done=steps_done, epoch_totals=epoch_totals)
        if state.rank == 0:
            progress = {"epoch": epoch, "steps_done": steps_done, "stopped_early": state.stopper.should_stop}
            checkpoint.save(folder, state=saved, best_model=state.best, history=state.history, progress=progress)
            ckpt = ray.train.Checkpoint.from_directory(folder)
        name = f"checkpoint_epoch_{epoch:04d}" + (f"_step_{steps_done:06d}" if steps_done else "")
        ray.train.report(report, checkpoint=ckpt, checkpoint_dir_name=name)


def save_before_preemption(state: LoopState, steps_done: int, epoch_totals: torch.Tensor | None = None) -> None:
    """Checkpoint the running epoch's first `steps_done` steps (with this rank's running loss and
    accuracy totals, so the resumed epoch reports all its steps), reported with the last epoch's metrics.

    In the first epoch nothing is measured yet, but the report still carries every metric an epoch
    reports (NaN, which searchers and ASHA skip): Tune rejects a result without the searched metric.
    """
    if state.rank == 0:
        logger.info("a node is about to be preempted: checkpointing after %d steps of the epoch", steps_done)
    if state.history:
        last = state.history[-1]
    else:
        last = {name: math.nan for name in epoch_metric_names(state)}
        last.update(epoch=state.epoch - 1, lr=state.optimizer.param_groups[-1]["lr"])
    report = {**last, **_best_so_far(state)}
    save_and_report(state, report, epoch=state.epoch - 1, steps_done=steps_done, epoch_totals=epoch_totals)


def begin_epoch(state: LoopState, epoch: int) -> StartedEpoch:
    """Point the augmentation at `epoch`, then start Ray Data's pass over its training rows."""
    ray.get(state.clock.set.remote(epoch))
    batches = training_batches(
        state.train_shard, batch_size=worker_batch(state.config, state.world_size), seed=state.config.seed, epoch=epoch
    )
    return StartedEpoch(batches)


def train_step(
    state: LoopState, batch: dict[str, torch.Tensor], *, step: int, loss_fn: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward one batch; the optimizer steps every --grad-accum-steps batches and at
    the epoch's end. Returns (loss, [loss sum, correct, samples]) of the batch."""
    config, device = state.config, state.device
    inputs = to_model_inputs(batch, state.spec, device, channels_last=device.type == "cuda")
    labels = batch["label"].to(device, non_blocking=True)
    targets: torch.Tensor = labels
    if config.mixup > 0 or config.cutmix > 0:
        inputs, targets = mix_batch(
            inputs,
            labels,
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            switch_prob=config.mix_switch_prob,
            num_classes=state.spec.num_classes,
        )
    sync_now = (step + 1) % config.grad_accum_steps == 0 or step + 1 == state.num_steps
    no_sync = getattr(state.model, "no_sync", contextlib.nullcontext)
    with contextlib.nullcontext() if sync_now else no_sync():
        with state.precision.autocast(device):
            logits = state.model(*inputs)
            loss = loss_fn(logits.float(), targets)
        state.scaler.scale(loss / config.grad_accum_steps).backward()
    if sync_now:
        if config.grad_clip_norm:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip_norm)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update()
    totals = torch.stack(
        [
            loss.detach().double() * labels.shape[0],
            (logits.argmax(1) == labels).sum().double(),
            torch.tensor(labels.shape[0], device=device, dtype=torch.float64),
        ]
    )
    return loss, totals


def train_one_epoch(state: LoopState, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """One pass over this worker's training batches; returns globally reduced loss, accuracy and data wait.

    Starts at `state.first_step` when resuming inside an epoch, from the totals of the steps done
    before; under --deterministic it first reads past the batches those steps trained on (the same
    batches: Ray Data keeps the order), otherwise it trains on the pass's first batches. Raises
    Diverged, on every rank at the same step, when any rank's loss is not finite (GradScaler's
    skipped fp16 steps have finite losses and are not divergence). Every --preemption-check-steps
    steps it asks Ray Train whether a node is about to be preempted and, if so, checkpoints once
    (save_before_preemption).
    """
    config = state.config
    state.model.train()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    totals = torch.zeros(3, device=state.device, dtype=torch.float64)  # loss sum, correct, samples
    if state.resumed_totals is not None:
        totals += state.resumed_totals.to(state.device)
        state.resumed_totals = None
    state.optimizer.zero_grad(set_to_none=True)
    iterator = iter(batches)
    wait_start = time.perf_counter()
    if config.deterministic:  # Ray has no offset into a pass: read past what was trained on
        for _ in range(state.first_step):
            next(iterator, None)
    data_wait = time.perf_counter() - wait_start
    preemption_saved = False
    window = LossWindow(state.device, first_step=state.first_step + 1)
    for step in range(state.first_step, state.num_steps):
        wait_start = time.perf_counter()
        batch = next(iterator, None)
        step_wait = time.perf_counter() - wait_start
        data_wait += step_wait
        if batch is None:  # fewer rows than planned: undecodable images were skipped
            break
        loss, step_totals = train_step(state, batch, step=step, loss_fn=loss_fn)
        totals += step_totals
        window.add(loss, images=batch["label"].shape[0], data_wait_s=step_wait)
        check_preemption = (step + 1) % config.preemption_check_steps == 0 and not preemption_saved
        if (step + 1) % config.log_every_steps == 0 or step + 1 == state.num_steps or check_preemption:
            # Diverged on every rank at once; and a preemption checkpoint never holds NaN weights.
            state.telemetry.record_window(window.close(epoch=state.epoch), lr=state.optimizer.param_groups[-1]["lr"])
            window = LossWindow(state.device, first_step=step + 2)
        if check_preemption and ray.train.get_preemption_info() is not None:
            save_before_preemption(state, step + 1, totals)
            preemption_saved = True
    # Leave the iterator exhausted so Ray Data finishes this epoch's execution cleanly.
    for _ in iterator:
        pass
    loss_sum, correct, count = all_reduce(totals).tolist()
    return {"train_loss": loss_sum / count, "train_acc": correct / count, "data_wait_s": data_wait}


@torch.no_grad()
def validate(state: LoopState, model: nn.Module | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Loss, top-1/top-5, mean class accuracy and per-pathway accuracy over every validation row.

    Returns (metrics, evaluation) where evaluation holds the confusion matrix and pathway
    accuracies of this epoch. Runs the unwrapped model in eval mode: no collective calls per
    batch, so ranks may see different numbers of validation batches.
    """
    core, device, spec = model or state.core, state.device, state.spec
    _broadcast_buffers(core)
    core.eval()
    confusion = torch.zeros(spec.num_classes, spec.num_classes, dtype=torch.int64, device=device)
    sums: dict[str, torch.Tensor] = {}
    for batch in state.val_shard.iter_torch_batches(batch_size=worker_batch(state.config, state.world_size)):
        inputs = to_model_inputs(batch, spec, device, channels_last=device.type == "cuda")
        labels = batch["label"].to(device, non_blocking=True)
        with state.precision.autocast(device):
            outputs = pathway_logits(core, inputs)
        counts = batch_counts({name: out.float() for name, out in outputs.items()}, labels, spec.num_classes)
        confusion += counts.pop("confusion")
        for key, value in counts.items():
            sums[key] = sums.get(key, 0) + value
    pathway_names = [name for name in core_pathways(core) if name != "full"]
    names = count_keys(spec.num_classes, pathway_names)
    packed = torch.stack([torch.as_tensor(sums.get(n, 0.0), device=device, dtype=torch.float64) for n in names])
    reduced = dict(zip(names, all_reduce(packed).tolist()))
    confusion = all_reduce(confusion)
    samples = max(reduced["samples"], 1.0)
    metrics = {
        "val_loss": reduced["loss"] / samples,
        "val_acc": reduced["top1"] / samples,
        "val_mean_class_acc": mean_class_accuracy(confusion),
    }
    if "top5" in reduced:
        metrics["val_acc5"] = reduced["top5"] / samples
    pathways = {"full": metrics["val_acc"]}
    for name in pathway_names:
        metrics[f"val_acc_{name}"] = pathways[name] = reduced[name] / samples
    return metrics, {"confusion": confusion.cpu().tolist(), "pathways": pathways if len(pathways) > 1 else None}


def validate_epoch(state: LoopState) -> tuple[dict[str, float], dict[str, Any]]:
    """validate() of the weights, and of their average as `<metric>_ema` with --ema-decay; the
    evaluation (confusion matrix, pathways) is of the weights --monitor scores."""
    metrics, evaluation = validate(state)
    if state.ema is not None:
        averaged, averaged_evaluation = validate(state, state.ema.model)
        metrics.update({f"{name}_ema": value for name, value in averaged.items()})
        if state.config.monitor.endswith("_ema"):
            evaluation = averaged_evaluation
    return metrics, evaluation


def core_pathways(model: nn.Module) -> list[str]:
    """Pathway names a model's validation reports: 'full' plus '<stream>_only' for two streams."""
    if getattr(model, "num_streams", 1) == 2:
        return ["full", *(f"{name}_only" for name in model.stream_names)]
    return ["full"]


def epoch_metric_names(state: LoopState) -> list[str]:
    """Every metric an epoch reports (train_one_epoch's, validate's, the loop's), known before the
    first epoch ends: validate's keys follow count_keys as these do."""
    pathway_names = [name for name in core_pathways(state.core) if name != "full"]
    counted = count_keys(state.spec.num_classes, pathway_names)
    val = ["val_loss", "val_acc", "val_mean_class_acc", *(["val_acc5"] if "top5" in counted else [])]
    val += [f"val_acc_{name}" for name in pathway_names]
    if state.ema is not None:
        val += [f"{name}_ema" for name in val]
    return ["epoch", "train_loss", "train_acc", "data_wait_s", *val, "lr", "epoch_time_s", "images_per_s"]


def end_epoch(state: LoopState, metrics: dict[str, float], evaluation: dict[str, Any]) -> None:
    """Record a finished epoch: early stopping, history, best model, the log line, the report."""
    state.first_step = 0
    improved = state.stopper.update(metrics, state.epoch)
    state.history.append(metrics)
    if improved:
        if state.rank == 0:  # only rank 0 writes checkpoints: the others need no host copy of the weights
            state.best = checkpoint.best_model(state, metrics, evaluation)
    if state.rank == 0:
        _log_epoch(state.epoch, state.config.epochs, metrics, improved)
    save_and_report(state, {**metrics, **_best_so_far(state)}, epoch=state.epoch)


def _best_so_far(state: LoopState) -> dict[str, float]:
    """The best epoch and its --monitor value, reported with every epoch (NaN before any)."""
    best = state.stopper.best
    return {"best_epoch": state.stopper.best_epoch, f"best_{state.config.monitor}": math.nan if best is None else best}


def _log_epoch(epoch: int, epochs: int, metrics: dict[str, float], improved: bool) -> None:
    parts = [f"epoch {epoch}/{epochs}"]
    for key in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "val_mean_class_acc",
        "val_acc_ema",
        "lr",
        "images_per_s",
    ):
        if key in metrics:
            value = metrics[key]
            parts.append(f"{key} {value:.3g}" if key in ("lr", "images_per_s") else f"{key} {value:.4f}")
    logger.info("  ".join(parts) + ("  *best*" if improved else ""))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. loop_config: {"config": TrainConfig dict, "spec": DataSpec,
    "clock": EpochClock handle, "threads": torch threads per worker, "run_name": str}."""
    state = start_worker(loop_config)
    config = state.config
    resume_from = ray.train.get_checkpoint()
    if resume_from:
        restore(state, resume_from)

    upcoming: StartedEpoch | None = None
    for epoch in range(state.epoch, config.epochs + 1):
        if state.stopper.should_stop:
            break
        state.epoch = epoch
        batches, upcoming = upcoming or begin_epoch(state, epoch), None
        state.telemetry.record_epoch(epoch)
        started = time.perf_counter()
        try:
            train_metrics = train_one_epoch(state, batches)
        except Diverged as diverged:
            if state.rank == 0:
                logger.error("stopping: %s; the last good checkpoint is that of epoch %d", diverged, epoch - 1)
            return
        train_time = time.perf_counter() - started
        if config.cache and epoch < config.epochs:
            # Validation then reads the object store and runs no Ray Data tasks, so the next epoch's
            # pipeline can start now. (Streamed validation would wait for CPUs held by that pipeline's
            # tasks, which stall until training consumes them: 20-45 s a validation, measured.)
            upcoming = begin_epoch(state, epoch + 1)
        val_metrics, evaluation = validate_epoch(state)
        metrics = {
            "epoch": epoch,
            **train_metrics,
            **val_metrics,
            "lr": state.optimizer.param_groups[-1]["lr"],
            "epoch_time_s": time.perf_counter() - started,
            "images_per_s": (state.num_steps - state.first_step) * config.batch / train_time,
        }
        end_epoch(state, metrics, evaluation)
    if upcoming is not None:  # stopped early: the epoch begun during validation will not run
        upcoming.close()
    if state.rank == 0 and state.stopper.should_stop:
        logger.info(
            "early stopping: %s did not improve for %d epochs; best %.4f at epoch %d",
            config.monitor,
            state.stopper.patience,
            state.stopper.best,
            state.stopper.best_epoch,
        )
