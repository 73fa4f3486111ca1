"""`python -m raymc.tune`: search hyperparameters with Ray Tune, Optuna (TPE) and ASHA early stopping.

Every trial is a distributed Ray Train run of the one training loop (`raymc.train.make_trainer`),
started from a Tune function trainable; its metrics reach Tune through `TuneReportCallback`. A
search space is a plain Python file in `tune_spaces/` whose parameter names are TrainConfig
fields. With no arguments a small search runs on the demo NYU set on a local Ray.

Layout of an experiment, OUT/NAME/:
    trials/<trial_id>/   each trial's Ray Train run folder (history.csv, best_model.pt, plots, ...)
    results.csv, results.parquet, trials.parquet, best_config.json, plots/   (raymc.results)
    search.json          the settings the experiment was started with (checked on --resume)
    <trial_id>/, experiment_state-*.json, searcher-state-*.pkl, tuner.pkl   Ray Tune's own files
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import inspect
import json
import logging
import math
import pickle
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import pandas as pd
import pyarrow.fs
import ray
import ray.train
from optuna.trial import TrialState
from ray import tune
from ray.air.constants import TRAINING_ITERATION
from ray.tune import Result, ResultGrid
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Domain, Float, Integer, LogUniform
from ray.util.placement_group import PlacementGroup

from raymc import results as results_io
from raymc.cluster import init_ray
from raymc.config import (
    PLACEMENT_SETTINGS,
    SETTING_NAMES,
    TrainConfig,
    add_config_arguments,
    add_seed_script_arguments,
    build_config,
    changed_settings,
    coerce,
    flag_names,
    load_yaml,
)
from raymc.data.pipeline import DataSource, DataSpec, data_spec, dataset_info
from raymc.data.sources import resolve_data
from raymc.errors import ConfigError, RaymcError, cli_main
from raymc.train import (
    WorkerResources,
    check_batch_fits,
    check_resumable,
    default_run_config,
    make_trainer,
    publish,
    storage_path,
)

logger = logging.getLogger(__name__)

SPACE_DIR = Path(__file__).resolve().parent.parent / "tune_spaces"
DEFAULT_SPACE = "demo_nyu"
SEARCH_FILE = "search.json"
TRIALS_DIR = "trials"
# Settings that hold for a whole experiment: where it is written, its resources, and --epochs,
# which is ASHA's max_t. A space may not search them.
NOT_SEARCHABLE = frozenset(PLACEMENT_SETTINGS) | {"epochs"}
# Defaults of a search that differ from a single run's: one worker per trial, so trials run side by side.
TUNE_DEFAULTS: dict[str, Any] = {"num_workers": 1}
# What the trial's own actor reserves. The TorchTrainer it starts requests its workers itself, so
# the trial needs no CPU; Tune refuses an all-zero request, and any CPU fraction here is taken from
# Ray Data's tasks (0.99 CPUs free cannot run a 1-CPU read task: ingest hangs). One byte of memory
# is a non-zero request that costs nothing.
TRIAL_ACTOR_RESOURCES = {"CPU": 0, "memory": 1}
# Reported by the training loop every epoch; any of them can be --metric.
REPORTED_METRICS = (
    "val_acc", "val_mean_class_acc", "val_acc5", "val_loss", "train_loss", "train_acc",
    "val_acc_rgb_only", "val_acc_depth_only",
)  # fmt: skip
SPACE_PROBES = 16  # parameter sets drawn to check a space before any trial starts
DIVERGED = "diverged"  # reported (as 1) by a trial whose training loss stopped being finite


# ---------------------------------------------------------------- search spaces


@dataclass(frozen=True)
class SearchSpace:
    """A loaded space file: Ray Tune domains (`SPACE = {...}`) or an Optuna define-by-run
    function (`def space(trial): ...`), plus optional `FIXED` settings for every trial."""

    path: str
    domains: dict[str, Domain] = field(default_factory=dict)
    define_by_run: Callable[[Any], dict[str, Any] | None] | None = None
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def optuna_space(self) -> Any:
        """What OptunaSearch takes: the function, or the domains as Optuna distributions."""
        return self.define_by_run or OptunaSearch.convert_search_space(self.domains)

    def draw(self, trial: optuna.Trial) -> dict[str, Any]:
        """One parameter set from an Optuna trial; define-by-run suggestions are checked as made."""
        if self.define_by_run is None:
            return dict(trial.params)  # the trial was asked with this space's distributions
        checked = _CheckedTrial(trial, self.path)
        returned = self.define_by_run(checked)
        if returned is not None and not isinstance(returned, Mapping):
            raise ConfigError(f"{self.path}: space(trial) must return None or a dict, got {type(returned).__name__}")
        for name in returned or {}:
            check_parameter_name(name, self.path)
        return {**checked.suggested, **(returned or {})}


class _CheckedTrial:
    """An optuna.Trial whose suggest_* calls check the parameter name and range first, so a bad
    space fails naming the parameter and the file instead of deep inside Optuna or a trial."""

    def __init__(self, trial: optuna.Trial, path: str) -> None:
        self._trial = trial
        self._path = path
        self.suggested: dict[str, Any] = {}

    def __getattr__(self, item: str) -> Any:
        attr = getattr(self._trial, item)
        if not (item.startswith("suggest_") and callable(attr)):
            return attr
        signature = inspect.signature(attr)

        def checked(*args: Any, **kwargs: Any) -> Any:
            arguments = signature.bind(*args, **kwargs).arguments
            check_parameter(arguments, self._path)
            try:
                value = attr(*args, **kwargs)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{self._path}: parameter '{arguments.get('name')}': {exc}") from None
            self.suggested[arguments["name"]] = value
            return value

        return checked


def check_parameter_name(name: str, path: str) -> None:
    """A searchable TrainConfig field, checked against the dataclass at run time."""
    if name not in SETTING_NAMES:
        raise ConfigError(
            f"{path}: unknown parameter '{name}': parameter names are TrainConfig fields, the flags of "
            f"`python -m raymc.train --help` with underscores (e.g. lr, label_smoothing, mixup, fusion)"
        )
    if name in NOT_SEARCHABLE:
        raise ConfigError(
            f"{path}: parameter '{name}' is set for the whole experiment and cannot be searched; "
            f"pass it as a flag (--{name.replace('_', '-')}) instead"
        )


def check_parameter(arguments: Mapping[str, Any], path: str) -> None:
    """Check one suggestion's arguments (name, low/high, log, choices) before Optuna sees them."""
    name = arguments.get("name")
    check_parameter_name(str(name), path)
    if "low" in arguments and "high" in arguments:
        low, high = arguments["low"], arguments["high"]
        if not low < high:
            raise ConfigError(f"{path}: parameter '{name}' has an empty range: low {low} >= high {high}")
        if arguments.get("log") and low <= 0:
            raise ConfigError(f"{path}: parameter '{name}' is log-scaled, so its low end must be > 0, got {low}")
    if "choices" in arguments and not list(arguments["choices"]):
        raise ConfigError(f"{path}: parameter '{name}' has no choices")


def _domain_arguments(name: str, domain: Domain) -> dict[str, Any]:
    """A Tune domain in suggest_* argument form, for check_parameter."""
    if isinstance(domain, (Float, Integer)):
        return {"name": name, "low": domain.lower, "high": domain.upper, "log": isinstance(domain.get_sampler(), LogUniform)}
    if isinstance(domain, Categorical):
        return {"name": name, "choices": domain.categories}
    return {"name": name}


def find_space(name: str) -> Path:
    """A space file: a path, or a name looked up in ./tune_spaces and in raymc's tune_spaces."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.stem if path.suffix == ".py" else path.name
    for folder in (Path("tune_spaces"), SPACE_DIR):
        if (folder / f"{stem}.py").is_file():
            return folder / f"{stem}.py"
    available = sorted(p.stem for p in SPACE_DIR.glob("*.py")) if SPACE_DIR.is_dir() else []
    raise ConfigError(f"--space {name}: no such file; give a path to a .py file or one of: {', '.join(available)}")


def _exec_space_file(path: Path) -> ModuleType:
    """Run a space file as a module. It is deliberately not put in sys.modules, so cloudpickle
    stores a define-by-run function by value and a resumed experiment needs no import path."""
    spec = importlib.util.spec_from_file_location(f"raymc_space_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a user's file: any error it raises is a bad space
        lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
        where = f" (line {lines[-1]})" if lines else ""
        raise ConfigError(f"{path}{where}: could not be loaded: {type(exc).__name__}: {exc}") from None
    return module


def load_space(name: str) -> SearchSpace:
    """Load and check a space file: known names, non-empty ranges, drawable by Optuna."""
    path = find_space(name)
    module = _exec_space_file(path)
    has_dict, has_function = hasattr(module, "SPACE"), hasattr(module, "space")
    if has_dict == has_function:
        raise ConfigError(
            f"{path}: define either SPACE = {{...}} (Ray Tune domains) or def space(trial): ... "
            f"(Optuna define-by-run){', not both' if has_dict else ''}"
        )
    fixed = getattr(module, "FIXED", {})
    if not isinstance(fixed, Mapping):
        raise ConfigError(f"{path}: FIXED must be a dict of setting: value")
    fixed = dict(fixed)
    domains: dict[str, Domain] = {}
    if has_dict:
        if not isinstance(module.SPACE, Mapping) or not module.SPACE:
            raise ConfigError(f"{path}: SPACE must be a non-empty dict of parameter: tune domain")
        for key, value in module.SPACE.items():
            if isinstance(value, Domain):
                domains[str(key)] = value
            elif isinstance(value, Mapping) and "grid_search" in value:
                raise ConfigError(f"{path}: parameter '{key}' uses grid_search, which Optuna cannot sample; use tune.choice")
            else:
                fixed[str(key)] = value  # a constant: the same for every trial
    elif not callable(module.space):
        raise ConfigError(f"{path}: space must be a function space(trial)")
    for name_ in fixed:
        _check_fixed_name(name_, path)
    for key, domain in domains.items():
        check_parameter(_domain_arguments(key, domain), str(path))
        try:
            OptunaSearch.convert_search_space({key: domain})
        except ValueError as exc:
            raise ConfigError(f"{path}: parameter '{key}': {exc}") from None
    space = SearchSpace(str(path), domains, None if has_dict else module.space, fixed)
    sample_params(space, SPACE_PROBES)
    return space


def _check_fixed_name(name: str, path: Path) -> None:
    if name not in SETTING_NAMES:
        raise ConfigError(f"{path}: FIXED has unknown setting '{name}'; use TrainConfig field names")


def sample_params(space: SearchSpace, n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Draw n parameter sets with Optuna's random sampler (what a search could ask for)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    draws = []
    for _ in range(n):
        trial = study.ask(space.optuna_space() if space.define_by_run is None else None)
        try:
            draws.append(space.draw(trial))
        except ConfigError:
            raise
        except Exception as exc:  # the user's define-by-run function failed
            raise ConfigError(f"{space.path}: space(trial) raised {type(exc).__name__}: {exc}") from None
    return draws


def trial_config(base: TrainConfig, params: Mapping[str, Any], *, name: str | None = None, source: str = "search space") -> TrainConfig:
    """The settings of one trial: the experiment's settings with this trial's parameters."""
    values = base.to_dict()
    values.update({key: coerce(key, value, source) for key, value in params.items()})
    if name is not None:
        values["name"] = name
    return build_config(values)


def check_space(space: SearchSpace, base: TrainConfig, *, probes: int = SPACE_PROBES) -> None:
    """Refuse a space whose parameter sets the trials would refuse (e.g. label_smoothing 1.5)."""
    for params in sample_params(space, probes):
        try:
            trial_config(base, params, source=space.path)
        except ConfigError as exc:
            raise ConfigError(f"{space.path}: a trial with {_format_params(params)} would be refused: {exc}") from None


def _format_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# ---------------------------------------------------------------- searcher and scheduler


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial the scheduler stopped early (or one that diverged)
    was PRUNED.

    Ray's OptunaSearch tells every stopped trial as COMPLETE with its last value, so TPE takes
    a trial cut after one epoch for a finished one and learns from a value the trial never
    reached at the end. The scheduler marks the trials it stops (`mark_pruned`); they reach Optuna
    as PRUNED with their intermediate values, which TPE ranks below completed trials. Intermediate
    values are reported at the trial's `epoch`, which stays right when a trial resumes.
    """

    def __init__(self, *args: Any, step_attr: str = "epoch", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._step_attr = step_attr
        self._pruned: set[str] = set()

    def mark_pruned(self, trial_id: str) -> None:
        self._pruned.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return super().on_trial_result(trial_id, result)
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped = trial_id in self._pruned or bool(result and result.get(DIVERGED))
        if error or not stopped or trial_id in self._completed_trials or not result:
            return super().on_trial_complete(trial_id, result=result, error=error)
        self._report(trial_id, result)  # the result that made the scheduler stop it
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def _report(self, trial_id: str, result: Mapping[str, Any]) -> None:
        value = result.get(self.metric)
        step = result.get(self._step_attr, result.get(TRAINING_ITERATION))
        if value is not None and step is not None and math.isfinite(value):
            self._ot_trials[trial_id].report(float(value), int(step))

    def intermediate_values(self, trial_id: str) -> dict[int, float]:
        """The values reported for a trial so far, by epoch, as the Optuna study holds them."""
        trial = self._ot_trials.get(trial_id)
        if trial is None or self._ot_study is None:
            return {}
        frozen = next(t for t in self._ot_study.get_trials(deepcopy=False) if t.number == trial.number)
        return dict(frozen.intermediate_values)

    def trial_states(self) -> dict[str, str]:
        """Optuna's state of each Tune trial: COMPLETE, PRUNED, FAIL or RUNNING."""
        if self._ot_study is None:
            return {}
        by_number = {t.number: t.state.name for t in self._ot_study.get_trials(deepcopy=False)}
        return {trial_id: by_number.get(t.number, "RUNNING") for trial_id, t in self._ot_trials.items()}

    @property
    def study(self) -> optuna.Study | None:
        return self._ot_study

    def save(self, checkpoint_path: str) -> None:
        # The space is left out: a define-by-run function from a space file cannot be pickled by
        # reference, and a restored searcher keeps the space it was created with (tuner.pkl).
        state = {key: value for key, value in self.__dict__.items() if key != "_space"}
        with open(checkpoint_path, "wb") as file:
            pickle.dump(state, file)


class PruningASHAScheduler(AsyncHyperBandScheduler):
    """ASHA that tells the searcher which trials it stopped before their last epoch.

    A trial that reaches max_t is not stopped (Ray's ASHA would kill it while its run is being
    written): it ends on its own and counts as complete. Tune does not save a scheduler's state,
    so on --resume the rungs would start empty and stop nothing for a while: each restored
    trial's epochs are put back on the rungs from the searcher's (saved) Optuna study.
    """

    def __init__(self, *, searcher: PruningOptunaSearch | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._searcher = searcher

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        if self._searcher is not None:
            self._replay(trial.trial_id, self._searcher.intermediate_values(trial.trial_id))

    def _replay(self, trial_id: str, values: Mapping[int, float]) -> None:
        """Record a trial's value at each rung it passed, as on_trial_result did the first time."""
        for milestone, recorded in self._trial_info[trial_id]._rungs:
            epoch = math.ceil(milestone)
            if epoch in values and trial_id not in recorded:
                recorded[trial_id] = self._metric_op * values[epoch]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision != TrialScheduler.STOP:
            return decision
        if result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE
        if self._searcher is not None:
            self._searcher.mark_pruned(trial.trial_id)
        return decision


def load_searcher(experiment_dir: str) -> PruningOptunaSearch | None:
    """The searcher as Tune last saved it in an experiment folder (its Optuna study included)."""
    filesystem, root = results_io.storage_filesystem(experiment_dir)
    pattern = PruningOptunaSearch.CKPT_FILE_TMPL.split("{}")[0]
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    states = sorted(i.path for i in infos if Path(i.path).name.startswith(pattern) and i.path.endswith(".pkl"))
    if not states:
        return None
    searcher = PruningOptunaSearch()
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "searcher.pkl"
        with filesystem.open_input_stream(states[-1]) as stream:
            local.write_bytes(stream.read())
        searcher.restore(str(local))
    return searcher


def make_sampler(kind: str, *, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE (random start-up trials: a quarter of the budget, 2 to 10) or random sampling."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, num_samples // 4)))


# ---------------------------------------------------------------- settings and resources


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
            raise ConfigError(f"--metric {self.metric} is not reported by the training loop; choose one of: {', '.join(allowed)}")

    def fingerprint_dict(self) -> dict[str, Any]:
        """The settings that change what an experiment is (not how it is run or resumed)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("resume", "max_concurrent_trials")}


def plan_trials(config: TrainConfig, cluster: Mapping[str, float], max_concurrent: int | None) -> tuple[int, WorkerResources]:
    """How many trials run at once, and each worker's resources.

    GPUs: as many trials as the GPUs hold. CPUs only: each worker gets one CPU and half the
    cluster's CPUs stay with Ray Data (workers that take every CPU starve ingest). On 2 CPUs that
    is one trial at a time, which measured faster than two half-CPU trials side by side.
    """
    workers = config.num_workers or 1
    gpus = config.gpus_per_worker if config.gpus_per_worker is not None else (1.0 if cluster.get("GPU", 0) >= 1 else 0.0)
    cpus_total = cluster.get("CPU", 1)
    if max_concurrent is None:
        if gpus > 0:
            max_concurrent = math.floor(cluster.get("GPU", 0) / (workers * gpus))
        else:
            max_concurrent = math.floor(cpus_total / 2 / (workers * (config.cpus_per_worker or 1)))
        max_concurrent = max(1, max_concurrent)
    cpus = config.cpus_per_worker
    if cpus is None:
        share = cpus_total / 2 / (max_concurrent * workers)
        cpus = math.floor(share) if share >= 1 else share
    return max_concurrent, WorkerResources(workers, cpus, gpus)


def experiment_name(config: TrainConfig, settings: SearchSettings, space: SearchSpace) -> str:
    """--name, or a stable name from the settings, so the same command resumes the same experiment."""
    if config.name:
        return config.name
    return f"tune-{space.name}-{experiment_fingerprint(config, settings, space)[:8]}"


def experiment_fingerprint(config: TrainConfig, settings: SearchSettings, space: SearchSpace) -> str:
    text = Path(space.path).read_text()
    content = {"config": dataclasses.replace(config, name=None).fingerprint(), "search": settings.fingerprint_dict(), "space": text}
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- the trial


def run_trial(
    params: dict[str, Any], *, base: dict[str, Any], source: DataSource, spec: DataSpec, resources: WorkerResources, storage: str
) -> None:
    """One Tune trial: a Ray Train run of the one loop with this trial's parameters, written to
    STORAGE/<trial_id> (a rerun of the trial resumes from its newest checkpoint there)."""
    started = time.perf_counter()
    trial_id = tune.get_context().get_trial_id()
    config = trial_config(TrainConfig(**base), params, name=trial_id)
    check_resumable(config, storage, trial_id)
    run_config = default_run_config(trial_id, storage, max_failures=config.max_failures, callbacks=[TuneReportCallback()])
    result = make_trainer(config, source=source, spec=spec, resources=resources, run_config=run_config).fit()
    try:
        publish(config, spec, result, storage, trial_id, time.perf_counter() - started)
    except RaymcError:
        last = result.metrics or {}
        if not last or last.get("epoch", config.epochs) >= config.epochs:
            raise
        # The loop stopped before its last epoch without early stopping: the loss diverged. That
        # is a result of these parameters, not an error: the searcher tells Optuna it was pruned.
        tune.report({**last, DIVERGED: 1})


def remove_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor has died; return how many.

    When Tune stops a trial (ASHA, an error), the trial's Train controller dies with it, and the
    placement group it made for its workers stays: Ray removes a group only once both its
    creator actor and its job are gone, and Train's own cleaner needs the dashboard's State API.
    On a small cluster the leaked group's CPUs then starve the next trial's Ray Data, which
    hangs. This reads the groups' creators from the GCS (Ray's internal state API); if that API
    changes, it removes nothing and says so in the log.
    """
    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        table = [gcs_pb2.PlacementGroupTableData.FromString(raw) for raw in state._connect_and_get_accessor().get_placement_group_table()]
    except Exception as exc:  # an internal API: fail soft
        logger.debug("cannot read the placement group table: %s", exc)
        return 0
    job = ray.get_runtime_context().get_job_id()
    removed = 0
    for group in table:
        ours = group.creator_job_id.hex() == job  # never another job's groups on a shared cluster
        made_by_dead_actor = group.creator_actor_dead and not ray.ActorID(group.creator_actor_id).is_nil()
        orphaned = ours and made_by_dead_actor and not group.is_detached
        if orphaned and group.state != gcs_pb2.PlacementGroupTableData.REMOVED:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
            removed += 1
    return removed


def sweep_placement_groups(*, seconds: float, every: float = 0.5) -> int:
    """Remove orphaned placement groups for a while (a killed trial's controller dies shortly
    after its trial); return how many were removed."""
    deadline = time.monotonic() + seconds
    removed = remove_orphaned_placement_groups()
    while time.monotonic() < deadline:
        time.sleep(every)
        removed += remove_orphaned_placement_groups()
    return removed


class PlacementGroupSweeper(tune.Callback):
    """For a minute after each trial ends, remove (once a second) the placement groups of Train
    runs that died with their trial, so that the next trials get their CPUs."""

    SWEEP_FOR_S = 60.0
    SWEEP_EVERY_S = 1.0

    def __init__(self) -> None:
        self._until = 0.0
        self._last = 0.0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._until = time.monotonic() + self.SWEEP_FOR_S

    on_trial_error = on_trial_complete

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now < self._until and now - self._last >= self.SWEEP_EVERY_S:
            self._last = now
            removed = remove_orphaned_placement_groups()
            if removed:
                logger.info("removed %d placement group(s) of trials that were stopped", removed)


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


class TrialLog(tune.Callback):
    """One log line as each trial starts and ends, in place of Tune's result tables."""

    def __init__(self, metric: str, max_t: int) -> None:
        self._metric = metric
        self._max_t = max_t

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        logger.info("trial %s started: %s", trial.trial_id, _format_params(trial.config))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        epoch, value = result.get("epoch", 0), result.get(self._metric, math.nan)
        how = "diverged" if result.get(DIVERGED) else "stopped early by ASHA" if epoch < self._max_t else "finished"
        logger.info("trial %s %s after %d epoch(s): %s %.4g", trial.trial_id, how, epoch, self._metric, value)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        logger.warning("trial %s failed: see %s/error.txt", trial.trial_id, trial.path)


def make_trainable(base: TrainConfig, source: DataSource, spec: DataSpec, resources: WorkerResources, storage: str) -> Any:
    """run_trial with the experiment's fixed arguments, reserving no CPU for the trial itself."""
    fn = tune.with_parameters(run_trial, base=base.to_dict(), source=source, spec=spec, resources=resources, storage=storage)
    return tune.with_resources(fn, TRIAL_ACTOR_RESOURCES)


# ---------------------------------------------------------------- the experiment


@dataclass(frozen=True)
class Experiment:
    """Where an experiment lives and what it needs to (re)start."""

    storage: str
    name: str
    base: TrainConfig
    space: SearchSpace
    settings: SearchSettings

    @property
    def path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def trials_storage(self) -> str:
        return f"{self.path}/{TRIALS_DIR}"


def check_experiment_folder(experiment: Experiment) -> None:
    """A new experiment needs a free name; --resume needs the same settings as the original."""
    exists = tune.Tuner.can_restore(experiment.path)
    if exists and not experiment.settings.resume:
        raise ConfigError(
            f"experiment {experiment.path} already exists; pass --resume to continue it, or a new --name"
        )
    if not exists and experiment.settings.resume:
        raise ConfigError(f"--resume: no experiment to resume at {experiment.path} (check --out and --name)")
    filesystem, root = results_io.storage_filesystem(experiment.path)
    record = f"{root}/{SEARCH_FILE}"
    fingerprint = experiment_fingerprint(experiment.base, experiment.settings, experiment.space)
    if exists:
        with filesystem.open_input_stream(record) as stream:
            previous = json.loads(stream.read())
        if previous["fingerprint"] != fingerprint:
            before = {**previous["config"], **previous["search"]}
            now = {**experiment.base.to_dict(), **experiment.settings.fingerprint_dict()}
            changed = changed_settings(before, now)
            raise ConfigError(
                f"--resume: experiment {experiment.path} was started with other settings "
                f"({', '.join(changed) or 'the space file changed'}); rerun with the original settings"
            )
        return
    filesystem.create_dir(root, recursive=True)
    with filesystem.open_output_stream(record) as stream:
        content = {
            "fingerprint": fingerprint, "space": experiment.space.path, "space_source": Path(experiment.space.path).read_text(),
            "config": experiment.base.to_dict(), "search": experiment.settings.fingerprint_dict(),
        }  # fmt: skip
        stream.write(json.dumps(content, indent=1).encode())


def build_tuner(experiment: Experiment, trainable: Any, max_concurrent: int) -> tune.Tuner:
    """A new Tuner: seeded Optuna search and ASHA on --metric, `epoch` as ASHA's time."""
    settings, base = experiment.settings, experiment.base
    searcher = PruningOptunaSearch(
        experiment.space.optuna_space(), metric=settings.metric, mode=settings.resolved_mode,
        sampler=make_sampler(settings.sampler, seed=base.seed, num_samples=settings.num_samples),
    )  # fmt: skip
    if settings.scheduler == "asha":
        scheduler = PruningASHAScheduler(
            searcher=searcher, time_attr="epoch", metric=settings.metric, mode=settings.resolved_mode,
            max_t=base.epochs, grace_period=settings.grace_period, reduction_factor=settings.reduction_factor,
        )  # fmt: skip
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=settings.num_samples,
            max_concurrent_trials=max_concurrent, trial_dirname_creator=_trial_dirname,
        ),  # fmt: skip
        run_config=tune.RunConfig(
            name=experiment.name, storage_path=experiment.storage, verbose=0,
            callbacks=[TrialLog(settings.metric, base.epochs), PlacementGroupSweeper()],
        ),  # fmt: skip
    )


def run_search(config: TrainConfig, settings: SearchSettings, space: SearchSpace | None = None) -> results_io.Results:
    """Everything `python -m raymc.tune` does after parsing flags; also the Python API's core."""
    space = space or load_space(settings.space)
    settings.validate(config)
    init_ray()
    base, source = resolve_data(config)
    spec = data_spec(dataset_info(source))
    max_concurrent, resources = plan_trials(base, ray.cluster_resources(), settings.max_concurrent_trials)
    check_batch_fits(base, spec, resources.num_workers)
    check_space(space, base)
    experiment = Experiment(storage_path(base.out), experiment_name(base, settings, space), dataclasses.replace(base, name=None), space, settings)
    check_experiment_folder(experiment)
    logger.info(
        "experiment %s: %d trials, %d at a time, %d worker(s) each (%s CPU, %s GPU)",
        experiment.path, settings.num_samples, max_concurrent, resources.num_workers, resources.cpus, resources.gpus,
    )  # fmt: skip
    trainable = make_trainable(experiment.base, source, spec, resources, experiment.trials_storage)
    if settings.resume:
        tuner = tune.Tuner.restore(experiment.path, trainable=trainable, resume_unfinished=True)
    else:
        tuner = build_tuner(experiment, trainable, max_concurrent)
    grid = tuner.fit()
    return finish_experiment(experiment, grid, spec)


# ---------------------------------------------------------------- after the search


def finish_experiment(experiment: Experiment, grid: ResultGrid, spec: DataSpec) -> results_io.Results:
    """Publish the trials that were stopped before they could, then write the tables and plots."""
    searcher = load_searcher(experiment.path)
    states = searcher.trial_states() if searcher else {}
    if any(states.get(_trial_id(result)) != "COMPLETE" for result in grid):
        sweep_placement_groups(seconds=5.0)  # the last stopped trials' groups, which Tune's loop left
    for result in grid:
        _publish_stopped_trial(experiment, result, spec, complete=states.get(_trial_id(result)) == "COMPLETE")
    trials, epochs = experiment_tables(grid, states, experiment)
    summary = results_io.Results(
        path=experiment.path, kind="experiment", trials=trials, epochs=epochs,
        best_config=best_config(trials, experiment),
    )  # fmt: skip
    results_io.write_experiment(summary)
    finished = int(trials["status"].isin(["completed", "pruned", "diverged", "error"]).sum()) if "status" in trials else 0
    if finished < experiment.settings.num_samples:
        logger.warning(
            "the search stopped after %d of %d trials: run the same command with --resume to finish it",
            finished, experiment.settings.num_samples,
        )  # fmt: skip
    return summary


def _trial_id(result: Result) -> str:
    return Path(result.path).name


def _publish_stopped_trial(experiment: Experiment, result: Result, spec: DataSpec, *, complete: bool) -> None:
    """Write the run folder of a trial that was killed before it could (stopped by ASHA, or
    interrupted) from its Train run's newest checkpoint. A complete trial wrote its own."""
    trial_id = _trial_id(result)
    summary = f"{experiment.trials_storage}/{trial_id}/summary.json"
    if complete and results_io.is_file(summary):
        return
    try:
        train_result = ray.train.Result.from_path(f"{experiment.trials_storage}/{trial_id}")
        config = trial_config(experiment.base, result.config, name=trial_id)
        publish(config, spec, train_result, experiment.trials_storage, trial_id, float((result.metrics or {}).get("time_total_s", 0.0)))
    except RuntimeError:  # Train found no checkpoint snapshot: the trial ended before its first epoch
        logger.info("trial %s has no checkpoint, so no run folder", trial_id)
    except RaymcError as exc:
        # publish() writes a run that ended before its last epoch, then says so; for a trial
        # the scheduler stopped that is expected.
        if not results_io.is_file(summary):
            logger.warning("trial %s has no run folder: %s", trial_id, exc)


# Columns of Tune's results that say nothing about a trial's training.
TUNE_NOISE = (
    "date", "hostname", "node_ip", "pid", "done", "checkpoint_dir_name", "should_checkpoint",
    "time_since_restore", "iterations_since_restore", "time_this_iter_s", "checkpoint_path", "experiment_tag",
)  # fmt: skip
TUNE_TIMING = ("timestamp", "time_total_s", "training_iteration")  # when each epoch was reported
STATUS = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "error", "RUNNING": "unfinished", "WAITING": "unfinished"}


def epochs_table(grid: ResultGrid, trials_storage: str) -> pd.DataFrame:
    """Every epoch of every trial: trial_id, epoch, the loop's metrics, and Tune's timing.

    A trial's epochs come from its run folder's history (what was trained, each epoch once,
    also the epochs of a trial interrupted before Tune heard of them); Tune's reports add the
    wall-clock columns, and stand in for a trial without a run folder.
    """
    frames = []
    for result in grid:
        trial_id = _trial_id(result)
        reported = result.metrics_dataframe
        if reported is not None and not reported.empty and "epoch" in reported:
            reported = reported.drop(columns=[c for c in reported.columns if c.startswith("config/") or c in TUNE_NOISE])
            # A resumed trial may report an epoch again; keep its newest report.
            reported = reported.drop_duplicates("epoch", keep="last")
        else:
            reported = None
        history = _run_history(f"{trials_storage}/{trial_id}")
        if history is not None and reported is not None:
            extra = ["epoch", *(c for c in TUNE_TIMING + (DIVERGED,) if c in reported)]
            frame = history.merge(reported[extra], on="epoch", how="left")
        else:
            frame = history if history is not None else reported
        if frame is not None:
            frames.append(frame.assign(trial_id=trial_id))
    if not frames:
        return pd.DataFrame(columns=["trial_id", "epoch"])
    table = pd.concat(frames, ignore_index=True).sort_values(["trial_id", "epoch"])
    first = ["trial_id", "epoch"]
    return table[first + [c for c in table.columns if c not in first]].reset_index(drop=True)


def _run_history(run_dir: str) -> pd.DataFrame | None:
    """A published run folder's history (one row per trained epoch), or None."""
    filesystem, root = results_io.storage_filesystem(run_dir)
    path = f"{root}/history.json"
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        rows = json.loads(stream.read())
    return pd.DataFrame(rows) if rows else None


def experiment_tables(grid: ResultGrid, states: Mapping[str, str], experiment: Experiment) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs): one row per trial (Tune's last results + what the search made of it),
    and one row per trial and epoch."""
    metric, mode = experiment.settings.metric, experiment.settings.resolved_mode
    epochs = epochs_table(grid, experiment.trials_storage)
    rows = []
    for result in grid:
        trial_id = _trial_id(result)
        history = epochs[epochs["trial_id"] == trial_id]
        state = states.get(trial_id, "FAIL" if result.error else "RUNNING")
        status = "diverged" if (result.metrics or {}).get(DIVERGED) else STATUS.get(state, state.lower())
        row = {"trial_id": trial_id, "status": status, "epochs_run": len(history)}
        row.update(_metric_summary(history, metric, mode))
        run_dir = f"{experiment.trials_storage}/{trial_id}"
        row["run_dir"] = run_dir
        row["best_model"] = f"{run_dir}/best_model.pt" if results_io.is_file(f"{run_dir}/best_model.pt") else None
        row.update({f"config/{k}": v for k, v in (result.config or {}).items()})
        rows.append(row)
    ours = pd.DataFrame(rows)
    tune_frame = grid.get_dataframe()
    if ours.empty or tune_frame.empty or "trial_id" not in tune_frame:
        return ours, epochs
    tune_frame = tune_frame.drop(columns=[c for c in tune_frame.columns if c in TUNE_NOISE or (c in ours and c != "trial_id")])
    return ours.merge(tune_frame, on="trial_id", how="left"), epochs


def _metric_summary(history: pd.DataFrame, metric: str, mode: str) -> dict[str, Any]:
    """best_<metric>, its epoch, and final_<metric> of one trial's epochs."""
    if history.empty or metric not in history:
        return {f"best_{metric}": None, "best_epoch": None, f"final_{metric}": None}
    values = history[metric]
    best_index = values.idxmax() if mode == "max" else values.idxmin()
    return {
        f"best_{metric}": float(values[best_index]),
        "best_epoch": int(history.loc[best_index, "epoch"]),
        f"final_{metric}": float(values.iloc[-1]),
    }


def best_config(trials: pd.DataFrame, experiment: Experiment) -> dict[str, Any]:
    """The best trial by its best --metric epoch: its parameters, all its settings, its weights."""
    metric, mode = experiment.settings.metric, experiment.settings.resolved_mode
    column = f"best_{metric}"
    if trials.empty or column not in trials or trials[column].isna().all():
        return {"metric": metric, "mode": mode, "trial_id": None}
    best = trials.loc[trials[column].idxmax() if mode == "max" else trials[column].idxmin()]
    params = {c.removeprefix("config/"): _plain(best[c]) for c in trials.columns if c.startswith("config/") and not _missing(best[c])}
    return {
        "metric": metric,
        "mode": mode,
        "trial_id": best["trial_id"],
        "value": float(best[column]),
        "epoch": int(best["best_epoch"]),
        "status": best["status"],
        "config": params,
        "train_config": trial_config(experiment.base, params, name=best["trial_id"]).to_dict(),
        "run_dir": best["run_dir"],
        "best_model": best["best_model"],
    }


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, for JSON."""
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------- command line


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raymc.tune",
        description="Search hyperparameters: Ray Tune runs trials (each a Ray Train run), Optuna "
        "(TPE) proposes them, ASHA stops poor ones early. Training flags are fixed for all trials. "
        "With no arguments: a small search on the demo NYU Depth V2 set on a local Ray.",
        argument_default=argparse.SUPPRESS,
    )
    search = parser.add_argument_group("search")
    search.add_argument(
        *flag_names("space"), default=DEFAULT_SPACE, help="search space: a .py file or a name in tune_spaces/ (default: %(default)s)"
    )
    search.add_argument(*flag_names("num_samples"), type=int, default=8, help="number of trials (default: %(default)s)")
    search.add_argument(
        *flag_names("max_concurrent_trials"), type=int, default=None,
        help="trials at once (default: what the cluster holds: GPUs / GPUs per trial; on CPUs, half the CPUs / workers per trial)",
    )  # fmt: skip
    search.add_argument(
        *flag_names("workers_per_trial"), dest="num_workers", type=int, metavar="W", help="Ray Train workers per trial (default: 1); same as --num-workers"
    )
    search.add_argument(*flag_names("metric"), default="val_acc", help="metric to optimize (default: %(default)s)")
    search.add_argument(
        *flag_names("mode"), choices=("min", "max"), default=None, help="minimize or maximize --metric (default: min for losses, else max)"
    )
    search.add_argument(
        *flag_names("grace_period"), type=int, default=1, help="ASHA: epochs every trial runs before it can be stopped (default: %(default)s)"
    )
    search.add_argument(
        *flag_names("reduction_factor"), type=float, default=2.0, help="ASHA: 1 in this many trials goes on at each rung (default: %(default)s)"
    )
    search.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="Optuna sampler, seeded with --seed (default: %(default)s)")
    search.add_argument(
        "--scheduler", choices=("asha", "fifo"), default="asha",
        help="asha stops poor trials early; fifo runs every trial to the end (default: %(default)s)",
    )  # fmt: skip
    search.add_argument("--resume", action="store_true", default=False, help="continue the interrupted experiment OUT/NAME")
    parser.add_argument("--config", help="YAML file of training settings (same names as the flags; flags win)")
    add_config_arguments(parser)
    add_seed_script_arguments(parser)
    _set_help(parser, "epochs", "epochs per trial, also ASHA's max_t (default: the space's FIXED, or 90)")
    _set_help(parser, "name", "experiment name: written to OUT/NAME (default: tune-<space>-<hash of the settings>)")
    _set_help(parser, "out", "storage path: experiments are written to OUT/NAME, trial runs to OUT/NAME/trials/<trial_id>")
    _set_help(parser, "num_workers", "Ray Train workers per trial (default: 1)")
    return parser


def _set_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Say what a training flag means for a search (the same field, a different scope)."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings[0].startswith("--"):
            action.help = text


SEARCH_FLAGS = tuple(f.name for f in dataclasses.fields(SearchSettings))


def experiment_config(cli_values: Mapping[str, Any], *, yaml_path: str | None, space: SearchSpace, metric: str) -> TrainConfig:
    """Every trial's fixed settings: defaults < demo defaults < search defaults < the space's FIXED
    < YAML < flags. --monitor follows --metric (so best_model.pt is the best epoch by it)."""
    values = {**TUNE_DEFAULTS, **space.fixed, **(load_yaml(yaml_path) if yaml_path else {}), **cli_values}
    monitors = TrainConfig.__dataclass_fields__["monitor"].metadata["choices"]
    if metric in monitors:
        values.setdefault("monitor", metric)
    return build_config(values)


def _print_results(results: results_io.Results) -> None:
    print(f"\nexperiment folder: {results.path}")
    print(results_io.format_top(results, 10))
    best = results.best_config
    if best.get("trial_id"):
        print(f"\nbest trial {best['trial_id']}: {best['metric']} {best['value']:.4f} at epoch {best['epoch']}")
        print("  " + _format_params(best["config"]))
        print(f"  weights: {best['best_model']}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = vars(get_args_parser().parse_args(argv))
    settings = SearchSettings(**{key: args.pop(key) for key in SEARCH_FLAGS})
    yaml_path = args.pop("config", None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    space = load_space(settings.space)
    config = experiment_config(args, yaml_path=yaml_path, space=space, metric=settings.metric)
    results = run_search(config, settings, space)
    _print_results(results)
    print(f"search time: {time.perf_counter() - started:.0f} s")
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
