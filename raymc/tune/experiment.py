"""An experiment: its settings, its folder OUT/NAME, the trials (each a Ray Train run of the one
loop), and what is left once the search ends (run folders of stopped trials, tables, plots).

Layout of an experiment, OUT/NAME/:
    trials/<trial_id>/   each trial's Ray Train run folder (history.csv, best_model.pt, plots, ...)
    results.csv, results.parquet, trials.parquet, best_config.json, plots/   (raymc.results)
    search.json          the settings the experiment was started with (checked on --resume)
    <trial_id>/, experiment_state-*.json, searcher-state-*.pkl, tuner.pkl   Ray Tune's own files
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray import tune
from ray.tune import Result, ResultGrid
from ray.tune.integration.ray_train import TuneReportCallback

from raymc import storage
from raymc.cluster import connected_to_cluster, init_ray
from raymc.config import TrainConfig, changed_settings, with_params
from raymc.data.pipeline import DataSource, DataSpec, data_spec, dataset_info
from raymc.data.sources import check_shared_storage, resolve_data
from raymc.driver import check_batch_fits, check_resumable, default_run_config, make_trainer, publish
from raymc.errors import ConfigError, RaymcError
from raymc.ray_compat import PlacementGroupSweeper, sweep_placement_groups
from raymc.resources import WorkerResources, plan_trials
from raymc.results import DIVERGED, Results, best_config, experiment_tables, trial_id_of, write_experiment
from raymc.tune.search import build_tuner, load_searcher
from raymc.tune.space import DEFAULT_SPACE, SearchSpace, check_space, format_params, load_space

logger = logging.getLogger(__name__)

SEARCH_FILE = "search.json"
TRIALS_DIR = "trials"
# What the trial's own actor reserves. The TorchTrainer it starts requests its workers itself, so
# the trial needs no CPU; Tune refuses an all-zero request, and any CPU fraction here is taken from
# Ray Data's tasks (0.99 CPUs free cannot run a 1-CPU read task: ingest hangs). One byte of memory
# is a non-zero request that costs nothing.
TRIAL_ACTOR_RESOURCES = {"CPU": 0, "memory": 1}
# Reported by the training loop every epoch; any of them can be --metric.
REPORTED_METRICS = (
    "val_acc",
    "val_mean_class_acc",
    "val_acc5",
    "val_loss",
    "train_loss",
    "train_acc",
    "val_acc_rgb_only",
    "val_acc_depth_only",
)


@dataclass(frozen=True)
class SearchSettings:
    """How to search, as opposed to what each trial trains (TrainConfig)."""

    space: str = DEFAULT_SPACE
    num_samples: int = 8
    max_concurrent_trials: int | None = None
    grace_period: int = 1
    reduction_factor: float = 2.0
    metric: str = "val_acc"
    mode: str | None = None
    sampler: str = "tpe"
    scheduler: str = "asha"
    resume: bool = False

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("min" if self.metric.endswith("loss") else "max")

    def validate(self, config: TrainConfig) -> None:
        """Reject settings that cannot work, naming the flag."""
        if self.num_samples < 1:
            raise ConfigError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError(f"--max-concurrent-trials must be at least 1, got {self.max_concurrent_trials}")
        if not 1 <= self.grace_period <= config.epochs:
            raise ConfigError(f"--grace-period must be between 1 and --epochs {config.epochs}, got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"--reduction-factor must be greater than 1, got {self.reduction_factor}")
        allowed = (*REPORTED_METRICS, f"best_{config.monitor}")
        if self.metric not in allowed:
            raise ConfigError(
                f"--metric {self.metric} is not reported by the training loop; choose one of: {', '.join(allowed)}"
            )

    def fingerprint_dict(self) -> dict[str, Any]:
        """The settings that change what an experiment is (not how it is run or resumed)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("resume", "max_concurrent_trials")}


def experiment_name(config: TrainConfig, settings: SearchSettings, space: SearchSpace) -> str:
    """--name, or a stable name from the settings, so the same command resumes the same experiment."""
    if config.name:
        return config.name
    return f"tune-{space.name}-{experiment_fingerprint(config, settings, space)[:8]}"


def experiment_fingerprint(config: TrainConfig, settings: SearchSettings, space: SearchSpace) -> str:
    text = Path(space.path).read_text()
    content = {
        "config": dataclasses.replace(config, name=None).fingerprint(),
        "search": settings.fingerprint_dict(),
        "space": text,
    }
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()


def run_trial(
    params: dict[str, Any],
    *,
    base: dict[str, Any],
    source: DataSource,
    spec: DataSpec,
    resources: WorkerResources,
    storage_path: str,
) -> None:
    """One Tune trial: a Ray Train run of the one loop with this trial's parameters, written to
    STORAGE/<trial_id> (a rerun of the trial resumes from its newest checkpoint there)."""
    started = time.perf_counter()
    trial_id = tune.get_context().get_trial_id()
    config = with_params(TrainConfig(**base), params, name=trial_id)
    check_resumable(config, storage_path, trial_id)
    callbacks = [TuneReportCallback()]
    run_config = default_run_config(trial_id, storage_path, max_failures=config.max_failures, callbacks=callbacks)
    result = make_trainer(config, source=source, spec=spec, resources=resources, run_config=run_config).fit()
    try:
        publish(config, spec, result, storage_path, trial_id, time.perf_counter() - started)
    except RaymcError:
        last = result.metrics or {}
        if not last or last.get("epoch", config.epochs) >= config.epochs:
            raise
        # The loop stopped before its last epoch without early stopping: the loss diverged. That
        # is a result of these parameters, not an error: the searcher tells Optuna it was pruned.
        tune.report({**last, DIVERGED: 1})


class TrialLog(tune.Callback):
    """One log line as each trial starts and ends, in place of Tune's result tables."""

    def __init__(self, metric: str, max_t: int) -> None:
        self._metric = metric
        self._max_t = max_t

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        logger.info("trial %s started: %s", trial.trial_id, format_params(trial.config))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        epoch, value = result.get("epoch", 0), result.get(self._metric, math.nan)
        how = "diverged" if result.get(DIVERGED) else "stopped early by ASHA" if epoch < self._max_t else "finished"
        logger.info("trial %s %s after %d epoch(s): %s %.4g", trial.trial_id, how, epoch, self._metric, value)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        logger.warning("trial %s failed: see %s/error.txt", trial.trial_id, trial.path)


def make_trainable(
    base: TrainConfig, source: DataSource, spec: DataSpec, resources: WorkerResources, storage_path: str
) -> Any:
    """run_trial with the experiment's fixed arguments, reserving no CPU for the trial itself."""
    fn = tune.with_parameters(
        run_trial, base=base.to_dict(), source=source, spec=spec, resources=resources, storage_path=storage_path
    )
    return tune.with_resources(fn, TRIAL_ACTOR_RESOURCES)


@dataclass(frozen=True)
class Experiment:
    """Where an experiment lives and what it needs to (re)start."""

    storage_path: str
    name: str
    base: TrainConfig
    space: SearchSpace
    settings: SearchSettings

    @property
    def path(self) -> str:
        return storage.join(self.storage_path, self.name)

    @property
    def trials_storage(self) -> str:
        return storage.join(self.path, TRIALS_DIR)


def check_experiment_folder(experiment: Experiment) -> None:
    """A new experiment needs a free name; --resume needs the same settings as the original."""
    exists = tune.Tuner.can_restore(*storage.ray_location(experiment.path))
    if exists and not experiment.settings.resume:
        raise ConfigError(f"experiment {experiment.path} already exists; pass --resume to continue it, or a new --name")
    if not exists and experiment.settings.resume:
        raise ConfigError(f"--resume: no experiment to resume at {experiment.path} (check --out and --name)")
    record = storage.join(experiment.path, SEARCH_FILE)
    fingerprint = experiment_fingerprint(experiment.base, experiment.settings, experiment.space)
    if exists:
        previous = storage.read_json(record)
        if previous["fingerprint"] != fingerprint:
            before = {**previous["config"], **previous["search"]}
            now = {**experiment.base.to_dict(), **experiment.settings.fingerprint_dict()}
            changed = changed_settings(before, now)
            raise ConfigError(
                f"--resume: experiment {experiment.path} was started with other settings "
                f"({', '.join(changed) or 'the space file changed'}); rerun with the original settings"
            )
        return
    content = {
        "fingerprint": fingerprint,
        "space": experiment.space.path,
        "space_source": Path(experiment.space.path).read_text(),
        "config": experiment.base.to_dict(),
        "search": experiment.settings.fingerprint_dict(),
    }
    storage.write_json(record, content)


def run_search(config: TrainConfig, settings: SearchSettings, space: SearchSpace | None = None) -> Results:
    """Everything `python -m raymc.tune` does after parsing flags; also the Python API's core."""
    space = space or load_space(settings.space)
    settings.validate(config)
    init_ray()
    check_shared_storage(config)
    max_concurrent, resources = plan_trials(  # before any data is prepared
        config, ray.cluster_resources(), settings.max_concurrent_trials, connected=connected_to_cluster()
    )
    base, source = resolve_data(config)
    spec = data_spec(dataset_info(source))
    check_batch_fits(base, spec, resources.num_workers)
    check_space(space, base)
    name = experiment_name(base, settings, space)
    experiment = Experiment(storage.as_uri(base.out), name, dataclasses.replace(base, name=None), space, settings)
    check_experiment_folder(experiment)
    logger.info(
        "experiment %s: %d trials, %d at a time, %d worker(s) each (%s CPU, %s GPU)",
        experiment.path,
        settings.num_samples,
        max_concurrent,
        resources.num_workers,
        resources.cpus,
        resources.gpus,
    )
    trainable = make_trainable(experiment.base, source, spec, resources, experiment.trials_storage)
    if settings.resume:
        path, filesystem = storage.ray_location(experiment.path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, storage_filesystem=filesystem)
    else:
        tuner = build_tuner(
            trainable,
            space=space,
            settings=settings,
            seed=base.seed,
            max_t=base.epochs,
            name=experiment.name,
            storage_path=experiment.storage_path,
            max_concurrent=max_concurrent,
            callbacks=[TrialLog(settings.metric, base.epochs), PlacementGroupSweeper()],
        )
    grid = tuner.fit()
    return finish_experiment(experiment, grid, spec)


# ---------------------------------------------------------------- after the search


def finish_experiment(experiment: Experiment, grid: ResultGrid, spec: DataSpec) -> Results:
    """Publish the trials that were stopped before they could, then write the tables and plots."""
    searcher = load_searcher(experiment.path)
    states = searcher.trial_states() if searcher else {}
    if any(states.get(trial_id_of(result)) != "COMPLETE" for result in grid):
        sweep_placement_groups(seconds=5.0)  # the last stopped trials' groups, which Tune's loop left
    for result in grid:
        _publish_stopped_trial(experiment, result, spec, complete=states.get(trial_id_of(result)) == "COMPLETE")
    metric, mode = experiment.settings.metric, experiment.settings.resolved_mode
    trials, epochs = experiment_tables(grid, states, trials_storage=experiment.trials_storage, metric=metric, mode=mode)
    summary = Results(
        path=experiment.path,
        kind="experiment",
        trials=trials,
        epochs=epochs,
        best_config=best_config(trials, base=experiment.base, metric=metric, mode=mode),
    )
    write_experiment(summary)
    finished = (
        int(trials["status"].isin(["completed", "pruned", "diverged", "error"]).sum()) if "status" in trials else 0
    )
    if finished < experiment.settings.num_samples:
        logger.warning(
            "the search stopped after %d of %d trials: run the same command with --resume to finish it",
            finished,
            experiment.settings.num_samples,
        )
    return summary


def _publish_stopped_trial(experiment: Experiment, result: Result, spec: DataSpec, *, complete: bool) -> None:
    """Write the run folder of a trial that was killed before it could (stopped by ASHA, or
    interrupted) from its Train run's newest checkpoint. A complete trial wrote its own."""
    trial_id = trial_id_of(result)
    run_dir = storage.join(experiment.trials_storage, trial_id)
    summary = storage.join(run_dir, "summary.json")
    if complete and storage.is_file(summary):
        return
    try:
        train_result = ray.train.Result.from_path(run_dir)
        config = with_params(experiment.base, result.config, name=trial_id)
        elapsed = float((result.metrics or {}).get("time_total_s", 0.0))
        publish(config, spec, train_result, experiment.trials_storage, trial_id, elapsed)
    except RuntimeError:  # Train found no checkpoint snapshot: the trial ended before its first epoch
        logger.info("trial %s has no checkpoint, so no run folder", trial_id)
    except RaymcError as exc:
        # publish() writes a run that ended before its last epoch, then says so; for a trial
        # the scheduler stopped that is expected.
        if not storage.is_file(summary):
            logger.warning("trial %s has no run folder: %s", trial_id, exc)
