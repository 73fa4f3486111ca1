"""`python -m raymc.train`: config -> datasets -> TorchTrainer.fit() -> run folder.

With no arguments it trains mc_resnet18 on the demo NYU set on a local Ray. Under
`ray job submit` (RAY_ADDRESS set) it runs on that cluster instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import ray.train

from raymc import storage
from raymc.cluster import connected_to_cluster, init_ray
from raymc.config import TrainConfig, add_config_arguments, build_config
from raymc.data.pipeline import damaged_shard_behind, data_spec, dataset_info
from raymc.data.sources import check_shared_storage, resolve_data
from raymc.driver import (
    TrainingResult,
    check_batch_fits,
    check_resumable,
    default_run_config,
    finished_run,
    make_trainer,
    publish,
    recorded_wall_time,
)
from raymc.errors import RaymcError, cli_main
from raymc.ray_compat import failure_text, raymc_cause
from raymc.resources import DATA_POOL, DATA_POOL_LABEL, data_pool_nodes, worker_resources
from raymc.seed_compat import add_seed_script_arguments

logger = logging.getLogger(__name__)


def run_training(config: TrainConfig) -> TrainingResult:
    """Everything `python -m raymc.train` does after parsing flags; also the Python API's core."""
    started = time.perf_counter()
    init_ray()
    check_shared_storage(config)
    resources = worker_resources(config, connected=connected_to_cluster())  # before any data is prepared
    config, source = resolve_data(config)
    spec = data_spec(dataset_info(source))
    check_batch_fits(config, spec, resources.num_workers)
    storage_path, name = storage.as_uri(config.out), config.run_name()
    check_resumable(config, storage_path, name)
    finished = finished_run(config, storage_path, name)
    if finished is not None:
        logger.info("run %s/%s has finished training: publishing its newest checkpoint", storage_path, name)
        elapsed = recorded_wall_time(storage_path, name) or time.perf_counter() - started
        return publish(config, spec, finished, storage_path, name, elapsed)
    logger.info(
        "run %s/%s on %d workers (%s CPU, %s GPU each)",
        storage_path,
        name,
        resources.num_workers,
        resources.cpus,
        resources.gpus,
    )
    if pool := data_pool_nodes():
        logger.info("Ray Data works on the data pool: %d node(s) labelled %s=%s", pool, DATA_POOL_LABEL, DATA_POOL)
    run_config = default_run_config(name, storage_path, max_failures=config.max_failures)
    trainer = make_trainer(config, source=source, spec=spec, resources=resources, run_config=run_config)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        logger.error("training run %s failed:\n%s", name, exc)
        cause = raymc_cause(exc)
        if cause is None and (damage := damaged_shard_behind(failure_text(exc), source)):
            cause = str(damage)
        if cause is not None:  # bad data or settings found while training: rerunning would not help
            raise RaymcError(f"training run {name} failed: {cause}") from exc
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RaymcError(
            f"training run {name} failed ({first_line}); its checkpoints in {storage_path}/{name} stay usable: "
            f"run the same command again to resume, or add --max-failures N to restart automatically"
        ) from exc
    return publish(config, spec, result, storage_path, name, time.perf_counter() - started)


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
