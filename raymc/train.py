"""`python -m raymc.train`: config -> datasets -> TorchTrainer.fit() -> run folder.

With no arguments it trains mc_resnet18 on the demo NYU set on a local Ray. Under
`ray job submit` (RAY_ADDRESS set) it runs on that cluster instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.train
import torch
from ray.train import (
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from raymc import checkpoint
from raymc.cluster import init_ray
from raymc.config import (
    TrainConfig,
    add_config_arguments,
    add_seed_script_arguments,
    build_config,
    changed_settings,
)
from raymc.data.pipeline import (
    DataSource,
    DataSpec,
    build_datasets,
    data_spec,
    dataset_info,
    start_epoch_clock,
)
from raymc.data.sources import resolve_data
from raymc.errors import ConfigError, RaymcError, cli_main
from raymc.loop import steps_per_epoch, train_loop_per_worker
from raymc.outputs import write_run_outputs

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


@dataclass
class TrainingResult:
    """Where a run's files are and what it achieved."""

    run_dir: str
    summary: dict[str, Any]
    history: list[dict[str, float]]


class ExactValidationDataConfig(DataConfig):
    """Split training rows equally (every rank takes the same number of steps, as DDP needs) and
    validation rows without dropping any, so validation metrics count every sample exactly once."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        # Ray Train calls this once per dataset, with a one-entry dict.
        others = {name: ds for name, ds in datasets.items() if name != "val"}
        output = super().configure(others, world_size, worker_handles, worker_node_ids, **kwargs)
        if "val" in datasets:
            val = datasets["val"].copy(datasets["val"])
            val.context.execution_options = self._resolve_execution_options("val")
            for i, split in enumerate(val.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)):
                output[i]["val"] = split
        return output


@dataclass(frozen=True)
class WorkerResources:
    num_workers: int
    cpus: float
    gpus: float

    @property
    def torch_threads(self) -> int:
        return max(1, math.floor(self.cpus))


def worker_resources(config: TrainConfig) -> WorkerResources:
    """One worker per GPU on a GPU cluster (else 2); by default half the CPUs stay with Ray Data."""
    cluster = ray.cluster_resources()
    cluster_gpus = int(cluster.get("GPU", 0))
    gpus = config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
        if not gpus and os.environ.get("RAY_ADDRESS"):
            logger.warning(
                "the cluster has no GPUs right now, so training runs on CPUs; on an autoscaling cluster "
                "pass --gpus-per-worker 1 (and --num-workers) to have GPU nodes started"
            )
    num_workers = config.num_workers or (max(1, int(cluster_gpus // gpus)) if gpus else 2)
    if config.batch % num_workers:
        raise ConfigError(
            f"--batch {config.batch} does not split evenly across {num_workers} workers: "
            f"use a multiple of {num_workers} (or set --num-workers)"
        )
    cpus = config.cpus_per_worker
    if cpus is None:
        share = cluster.get("CPU", 1) / 2 / num_workers
        cpus = math.floor(share) if share >= 1 else share
    return WorkerResources(num_workers, cpus, gpus)


def storage_path(out: str) -> str:
    """--out as Ray Train's storage path: a URI as given, a local path made absolute."""
    return out if "://" in out else str(Path(out).expanduser().resolve())


def _run_filesystem(storage: str, name: str) -> tuple[pyarrow.fs.FileSystem, str]:
    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    return filesystem, f"{root.rstrip('/')}/{name}"


def check_resumable(config: TrainConfig, storage: str, name: str) -> None:
    """Refuse to resume a run folder that was trained with different settings; else record them."""
    filesystem, run_path = _run_filesystem(storage, name)
    config_path = f"{run_path}/{CONFIG_FILE}"
    if filesystem.get_file_info(config_path).type == pyarrow.fs.FileType.File:
        with filesystem.open_input_stream(config_path) as stream:
            previous = json.loads(stream.read())
        if previous.get("fingerprint") != config.fingerprint():
            changed = changed_settings(previous.get("config", {}), config.to_dict())
            raise ConfigError(
                f"run folder {storage}/{name} was trained with other settings ({', '.join(changed) or 'unknown'}); "
                f"rerun with the original settings to resume it, or pass a new --name"
            )
        return
    filesystem.create_dir(run_path, recursive=True)
    with filesystem.open_output_stream(config_path) as stream:
        stream.write(json.dumps({"fingerprint": config.fingerprint(), "config": config.to_dict()}, indent=1).encode())


def finished_run(config: TrainConfig, storage: str, name: str) -> ray.train.Result | None:
    """The Ray Train result of a run folder whose newest checkpoint ends the run (every epoch
    trained, or stopped early), so that the same command run again publishes it at once instead
    of starting workers that would find nothing left to do."""
    try:
        result = ray.train.Result.from_path(f"{storage.rstrip('/')}/{name}")
    except RuntimeError:  # no run folder, or no checkpoint registered in it yet
        return None
    if result.checkpoint is None:
        return None
    progress_path = f"{result.checkpoint.path}/{checkpoint.PROGRESS_FILE}"
    with result.checkpoint.filesystem.open_input_stream(progress_path) as stream:
        progress = json.loads(stream.read())
    ended = progress["stopped_early"] or (progress["epoch"] >= config.epochs and not progress["steps_done"])
    return result if ended else None


def _recorded_wall_time(storage: str, name: str) -> float | None:
    """The wall time in a published run's summary.json (the run that trained), if there is one."""
    filesystem, run_path = _run_filesystem(storage, name)
    path = f"{run_path}/summary.json"
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read()).get("wall_time_s")


def default_run_config(name: str, storage: str, *, max_failures: int = 0, **kwargs: Any) -> RunConfig:
    """Ray Train run settings: newest checkpoint kept (it carries the best weights), quiet logs."""
    return RunConfig(
        name=name,
        storage_path=storage,
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
        dataset_config=ExactValidationDataConfig(),
    )


def check_batch_fits(config: TrainConfig, spec: DataSpec, num_workers: int) -> None:
    """Refuse a --batch that leaves no full training step for the workers."""
    if steps_per_epoch(spec.num_train, num_workers, config) < 1:
        raise ConfigError(
            f"--batch {config.batch} is larger than the {spec.num_train} training rows split across "
            f"{num_workers} workers; use a smaller --batch"
        )


def _summary(
    config: TrainConfig, spec: DataSpec, best: dict[str, Any], history: list[dict], elapsed: float, *, stopped_early: bool
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
        "stopped_early": stopped_early,
        "monitor": config.monitor,
        "best_epoch": best["epoch"],
        f"best_{config.monitor}": best["metrics"][config.monitor],
        "best_metrics": best["metrics"],
        "final_metrics": last,
        "pathways": best.get("pathways"),
        "num_params": best["num_params"],
        "train_time_s": sum(row["epoch_time_s"] for row in history),
        "wall_time_s": elapsed,
    }


def publish(config: TrainConfig, spec: DataSpec, result: ray.train.Result, storage: str, name: str, elapsed: float) -> TrainingResult:
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
    filesystem, run_path = _run_filesystem(storage, name)
    with tempfile.TemporaryDirectory() as staging:
        torch.save(best, Path(staging) / checkpoint.BEST_MODEL_FILE)
        write_run_outputs(
            staging, history=history, summary=summary, classes=list(spec.classes),
            confusion=best.get("confusion"), pathways=best.get("pathways"),
        )
        pyarrow.fs.copy_files(staging, run_path, destination_filesystem=filesystem)
    run_dir = run_path if "://" not in storage else f"{storage.rstrip('/')}/{name}"
    if len(history) < config.epochs and not progress["stopped_early"]:
        raise RaymcError(
            f"run {name} stopped after epoch {len(history)} of {config.epochs}: the training loss diverged "
            f"(the worker log above names the step); epochs 1-{len(history)} are published in {run_dir} and "
            f"its last good checkpoint stays there; lower --lr or set --grad-clip-norm and run again"
        )
    return TrainingResult(run_dir=run_dir, summary=summary, history=history)


# How a raymc error raised in a Ray Data task reaches the driver: only as its traceback's text
# (Ray Data wraps it in a UserCodeException); the last such line is the one that stopped the run.
RAYMC_ERROR_LINE = re.compile(r"^raymc(?:\.\w+)+\.\w+: (.+)$", re.MULTILINE)


def raymc_cause(error: ray.train.TrainingFailedError) -> str | None:
    """The message of the RaymcError behind a failed Train run (e.g. a bad image under
    --on-bad-image fail, raised in a worker or in a Ray Data task feeding it), or None when
    the run failed for another reason (a killed worker, a lost node)."""
    failures = [*getattr(error, "worker_failures", {}).values(), getattr(error, "controller_failure", None)]
    for failure in filter(None, failures):
        failure = _unwrapped(failure)
        if isinstance(failure, RaymcError):
            return str(failure)
        found = RAYMC_ERROR_LINE.findall(str(failure))
        if found:
            return found[-1]
    return None


def _unwrapped(error: BaseException) -> BaseException:
    """The exception a RayTaskError carries: Ray's wrapper subclasses the original's class too, but
    its text is Ray's traceback, not the original message."""
    while isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        error = error.cause
    return error


def run_training(config: TrainConfig) -> TrainingResult:
    """Everything `python -m raymc.train` does after parsing flags; also the Python API's core."""
    started = time.perf_counter()
    init_ray()
    config, source = resolve_data(config)
    spec = data_spec(dataset_info(source))
    resources = worker_resources(config)
    check_batch_fits(config, spec, resources.num_workers)
    storage, name = storage_path(config.out), config.run_name()
    check_resumable(config, storage, name)
    finished = finished_run(config, storage, name)
    if finished is not None:
        logger.info("run %s/%s has finished training: publishing its newest checkpoint", storage, name)
        return publish(config, spec, finished, storage, name, _recorded_wall_time(storage, name) or time.perf_counter() - started)
    logger.info("run %s/%s on %d workers (%s CPU, %s GPU each)", storage, name, resources.num_workers, resources.cpus, resources.gpus)
    trainer = make_trainer(config, source=source, spec=spec, resources=resources, run_config=default_run_config(name, storage, max_failures=config.max_failures))
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        logger.error("training run %s failed:\n%s", name, exc)
        cause = raymc_cause(exc)
        if cause is not None:  # bad data or settings found while training: rerunning would not help
            raise RaymcError(f"training run {name} failed: {cause}") from exc
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RaymcError(
            f"training run {name} failed ({first_line}); its checkpoints in {storage}/{name} stay usable: "
            f"run the same command again to resume, or add --max-failures N to restart automatically"
        ) from exc
    return publish(config, spec, result, storage, name, time.perf_counter() - started)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raymc.train",
        description="Train an RGB-D MCResNet or a stochastic-depth ResNet with Ray Train. "
        "With no arguments: mc_resnet18 on the demo NYU Depth V2 set on a local Ray.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML file of settings (same names as the flags; flags win)")
    add_config_arguments(parser)
    add_seed_script_arguments(parser)
    return parser


def _print_summary(result: TrainingResult) -> None:
    s = result.summary
    print(f"\nrun folder: {result.run_dir}")
    print(f"epochs run: {s['epochs_run']}/{s['epochs']}" + ("  (stopped early)" if s["stopped_early"] else ""))
    print(f"best epoch: {s['best_epoch']}  {s['monitor']} {s['best_metrics'][s['monitor']]:.4f}")
    best = s["best_metrics"]
    print(f"best val_acc {best['val_acc']:.4f}  val_mean_class_acc {best['val_mean_class_acc']:.4f}")
    if s.get("pathways"):
        print("pathways: " + "  ".join(f"{k} {v:.4f}" for k, v in s["pathways"].items()))


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = vars(get_args_parser().parse_args(argv))
    yaml_path = args.pop("config", None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_training(build_config(args, yaml_path=yaml_path))
    _print_summary(result)
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
