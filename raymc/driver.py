"""What `raymc.train` and `raymc.tune` share: resume checks, the TorchTrainer of one run, and
publishing a run folder from its newest checkpoint. Neither CLI imports the other; both import this.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raymc import checkpoint, storage
from raymc.config import TrainConfig, changed_settings
from raymc.data.pipeline import DataSource, DataSpec, build_datasets, start_epoch_clock
from raymc.errors import ConfigError, RaymcError
from raymc.loop import steps_per_epoch, train_loop_per_worker
from raymc.outputs import write_run_outputs
from raymc.ray_compat import ExactValidationDataConfig, ingest_options
from raymc.resources import WorkerResources

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FEW_STEPS = 5  # steps per epoch below which a run is warned that its batch is too large for the data
MAX_UNUSED_FRACTION = 0.25  # training rows an epoch may leave out before the run is warned


@dataclass
class TrainingResult:
    """Where a run's files are and what it achieved."""

    run_dir: str
    summary: dict[str, Any]
    history: list[dict[str, float]]


def check_resumable(config: TrainConfig, storage_path: str, name: str) -> None:
    """Refuse to resume a run folder that was trained with different settings; else record them."""
    config_path = storage.join(storage_path, name, CONFIG_FILE)
    if storage.is_file(config_path):
        previous = storage.read_json(config_path)
        if previous.get("fingerprint") != config.fingerprint():
            changed = changed_settings(previous.get("config", {}), config.to_dict())
            raise ConfigError(
                f"run folder {storage_path}/{name} was trained with other settings "
                f"({', '.join(changed) or 'unknown'}); rerun with the original settings to resume it, "
                f"or pass a new --name"
            )
        return
    storage.write_json(config_path, {"fingerprint": config.fingerprint(), "config": config.to_dict()})


def finished_run(config: TrainConfig, storage_path: str, name: str) -> ray.train.Result | None:
    """The Ray Train result of a run folder whose newest checkpoint ends the run (every epoch
    trained, or stopped early), so that the same command run again publishes it at once instead
    of starting workers that would find nothing left to do."""
    try:
        path, filesystem = storage.ray_location(storage.join(storage_path, name))
        result = ray.train.Result.from_path(path, storage_filesystem=filesystem)
    except RuntimeError:  # no run folder, or no checkpoint registered in it yet
        return None
    if result.checkpoint is None:
        return None
    progress_path = f"{result.checkpoint.path}/{checkpoint.PROGRESS_FILE}"
    progress = storage.read_json(progress_path, fs=result.checkpoint.filesystem)
    ended = progress["stopped_early"] or (progress["epoch"] >= config.epochs and not progress["steps_done"])
    return result if ended else None


def recorded_wall_time(storage_path: str, name: str) -> float | None:
    """The wall time in a published run's summary.json (the run that trained), if there is one."""
    path = storage.join(storage_path, name, "summary.json")
    return storage.read_json(path).get("wall_time_s") if storage.is_file(path) else None


def default_run_config(name: str, storage_path: str, *, max_failures: int = 0, **kwargs: Any) -> RunConfig:
    """Ray Train run settings: newest checkpoint kept (it carries the best weights), quiet logs."""
    path, filesystem = storage.ray_location(storage_path)
    return RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=filesystem,
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        failure_config=FailureConfig(max_failures=max_failures),
        logging_config=LoggingConfig(log_level="WARNING"),
        **kwargs,
    )


def make_trainer(
    config: TrainConfig, *, source: DataSource, spec: DataSpec, resources: WorkerResources, run_config: RunConfig
) -> TorchTrainer:
    """The TorchTrainer for one run; raymc.tune builds one per trial with its own RunConfig."""
    clock = start_epoch_clock()
    ray.data.DataContext.get_current().enable_progress_bars = False  # the epoch lines say enough
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(),
            "spec": spec,
            "clock": clock,
            "threads": resources.torch_threads,
            "run_name": run_config.name,
        },
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.gpus > 0,
            resources_per_worker={"CPU": resources.cpus, **({"GPU": resources.gpus} if resources.gpus else {})},
        ),
        run_config=run_config,
        datasets=build_datasets(source, spec, config, clock),
        dataset_config=ExactValidationDataConfig(execution_options=ingest_options(preserve_order=config.deterministic)),
    )


def check_batch_fits(config: TrainConfig, spec: DataSpec, num_workers: int) -> None:
    """Refuse a --batch that leaves no full training step for the workers; warn when it leaves only
    a few, or leaves many rows out of every epoch (each worker drops its last partial batch)."""
    steps = steps_per_epoch(spec.num_train, num_workers, config)
    if steps < 1:
        raise ConfigError(
            f"--batch {config.batch} is larger than the {spec.num_train} training rows split across "
            f"{num_workers} workers; use a smaller --batch"
        )
    unused = spec.num_train - steps * config.batch
    if steps < FEW_STEPS or unused > MAX_UNUSED_FRACTION * spec.num_train:
        logger.warning(
            "--batch %d over %d workers gives %d step(s) per epoch on %d training rows, %d of them unused "
            "each epoch; a smaller --batch (or fewer workers) trains on more of the data per epoch",
            config.batch,
            num_workers,
            steps,
            spec.num_train,
            unused,
        )


def _summary(
    config: TrainConfig,
    spec: DataSpec,
    best: dict[str, Any],
    history: list[dict],
    elapsed: float,
    *,
    stopped_early: bool,
) -> dict:
    last = history[-1]
    return {
        "model": config.model,
        "data": config.data or "demo-nyu",
        "dataset": config.dataset,
        "classes": list(spec.classes),
        "num_train": spec.num_train,
        "num_val": spec.num_val,
        "epochs_run": len(history),
        "epochs": config.epochs,
        "deterministic": config.deterministic,
        "stopped_early": stopped_early,
        "monitor": config.monitor,
        "best_epoch": best["epoch"],
        f"best_{config.monitor}": best["metrics"][config.monitor],
        "best_metrics": best["metrics"],
        "final_metrics": last,
        "pathways": best.get("pathways"),
        "num_params": best["num_params"],
        "pretrained": best.get("pretrained"),
        "train_time_s": sum(row["epoch_time_s"] for row in history),
        "wall_time_s": elapsed,
    }


def publish(
    config: TrainConfig, spec: DataSpec, result: ray.train.Result, storage_path: str, name: str, elapsed: float
) -> TrainingResult:
    """Write the run folder's files from the newest checkpoint (it carries history and best weights).

    A run whose loop ended before its last epoch without early stopping diverged: its finished
    epochs are published, then RaymcError says so.
    """
    if result.checkpoint is None:
        raise RaymcError(
            f"run {name} ended before its first epoch finished, so there is no checkpoint to publish; "
            f"the worker log above says why (e.g. a diverging loss: try a lower --lr)"
        )
    with result.checkpoint.as_directory() as folder:
        best = checkpoint.load_best_model(folder)
        history = checkpoint.load_history(folder)
        progress = checkpoint.load_progress(folder)
    if not best:
        raise RaymcError(f"run {name}: no epoch produced a finite {config.monitor}; nothing to publish")
    summary = _summary(config, spec, best, history, elapsed, stopped_early=progress["stopped_early"])
    run_dir = storage.join(storage_path, name)
    with tempfile.TemporaryDirectory() as staging:
        torch.save(best, Path(staging) / checkpoint.BEST_MODEL_FILE)
        write_run_outputs(
            staging,
            history=history,
            summary=summary,
            classes=list(spec.classes),
            confusion=best.get("confusion"),
            pathways=best.get("pathways"),
        )
        storage.upload_folder(staging, run_dir)
    if len(history) < config.epochs and not progress["stopped_early"]:
        raise RaymcError(
            f"run {name} stopped after epoch {len(history)} of {config.epochs}: the training loss diverged "
            f"(the worker log above names the step); epochs 1-{len(history)} are published in {run_dir} and "
            f"its last good checkpoint stays there; lower --lr or set --grad-clip-norm and run again"
        )
    return TrainingResult(run_dir=run_dir, summary=summary, history=history)
