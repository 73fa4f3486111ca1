"""The training loop every raymc model and dataset runs in, as a Ray Train worker function.

Read top to bottom: set up (model, optimizer, schedule, precision), restore the newest
checkpoint if there is one, then per epoch: train, validate, decide best/stop from metrics
reduced across ranks (so every rank decides the same), report metrics with a checkpoint.
Everything an epoch changes lives in one `LoopState` that the functions below take explicitly.
"""

from __future__ import annotations

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
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from raymc import checkpoint
from raymc.batches import StartedEpoch, device_batches, train_collate, training_batches
from raymc.config import TrainConfig
from raymc.data.spec import DataSpec
from raymc.early_stopping import EarlyStopping
from raymc.ema import WeightAverage
from raymc.loss_window import Diverged, LossWindow, all_reduce
from raymc.models import build_model, model_kwargs
from raymc.optim import build_optimizer, build_scheduler
from raymc.precision import Precision
from raymc.pretrained import initialize
from raymc.quiet import quiet_train_worker
from raymc.step import StepContext, StepSettings, compile_model, train_step
from raymc.telemetry import TrainingTelemetry
from raymc.validation import val_metric_names, validate

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


def compiled(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    """--compile: raymc.step.compile_model of what trains (the DDP-wrapped model, so DDP's bucketing
    stays visible to the compiler)."""
    return compile_model(model, backend=config.compile_backend, device=device) if config.compile else model


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
        state.train_shard,
        batch_size=worker_batch(state.config, state.world_size),
        seed=state.config.seed,
        epoch=epoch,
        device=state.device,
        collate_fn=train_collate(state.config, state.device),
    )
    return StartedEpoch(batches)


def step_context(state: LoopState) -> StepContext:
    """What raymc.step's train_step needs of this worker's state."""
    config = state.config
    return StepContext(
        model=state.model,
        optimizer=state.optimizer,
        scaler=state.scaler,
        precision=state.precision,
        spec=state.spec,
        device=state.device,
        loss_fn=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        settings=StepSettings.from_config(config),
        scheduler=state.scheduler,
        ema=state.ema,
    )


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
    context = step_context(state)
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
        if not batch["label"].shape[0]:  # --decode-on device skipped every image of the batch as bad
            continue
        loss, step_totals = train_step(context, batch, step=step, num_steps=state.num_steps)
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


def validate_epoch(state: LoopState) -> tuple[dict[str, float], dict[str, Any]]:
    """validate() of the weights, and of their average as `<metric>_ema` with --ema-decay; the
    evaluation (confusion matrix, pathways) is of the weights --monitor scores."""
    metrics, evaluation = _validate(state, state.core)
    if state.ema is not None:
        averaged, averaged_evaluation = _validate(state, state.ema.model)
        metrics.update({f"{name}_ema": value for name, value in averaged.items()})
        if state.config.monitor.endswith("_ema"):
            evaluation = averaged_evaluation
    return metrics, evaluation


def _validate(state: LoopState, model: nn.Module) -> tuple[dict[str, float], dict[str, Any]]:
    """raymc.validation.validate of `model` over this worker's validation shard, read anew."""
    batches = device_batches(
        state.val_shard, batch_size=worker_batch(state.config, state.world_size), device=state.device
    )
    return validate(model, batches, spec=state.spec, device=state.device, precision=state.precision)


def epoch_metric_names(state: LoopState) -> list[str]:
    """Every metric an epoch reports (train_one_epoch's, validate_epoch's, the loop's), known before
    the first epoch ends."""
    val = val_metric_names(state.core, state.spec)
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
