"""Every use of a private Ray API and every workaround of a Ray bug, in one place.

Each names the Ray issue or change it works around. tests/test_ray_compat.py checks each one
against the installed Ray, so an upgrade that breaks (or fixes) one fails a test that names it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.data import DataContext, ExecutionOptions, RandomSeedConfig
from ray.train import DataConfig
from ray.util.placement_group import PlacementGroup

from raymc.errors import RaymcError

if TYPE_CHECKING:
    import optuna
    from ray.train import TrainingFailedError
    from ray.tune.schedulers import AsyncHyperBandScheduler
    from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- Ray core: a local Ray on 127.0.0.1


def bind_local_ray_to_loopback() -> None:
    """Make the local Ray about to start bind to 127.0.0.1, even if `ray` was imported before
    `raymc` set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray reads that switch once, into the private
    `ray._private.ray_constants.ENABLE_RAY_CLUSTER`, when it is imported, and otherwise turns
    127.0.0.1 into the machine's address (services.resolve_ip_for_localhost)."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


# ---------------------------------------------------------------- Ray Train: data splits


class ExactValidationDataConfig(DataConfig):
    """Split training rows equally (every rank takes the same number of steps, as DDP needs) and
    validation rows without dropping any, so validation metrics count every sample exactly once.

    Ray's DataConfig splits every dataset with `equal=True`, which drops up to world_size - 1
    rows of each pass (ray-project/ray#63285). This override uses the private
    `DataConfig._resolve_execution_options` to give the validation split the options Train would.
    """

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


def ingest_options(*, preserve_order: bool = False) -> ExecutionOptions:
    """Ray Train's default ingest options without `exclude_resources`: DataConfig's own default
    (`default_ingest_options`) copies that deprecated field, which makes Ray 2.60 warn
    (RayDeprecationWarning, "removed after January") on every run; raymc passes these instead.
    `preserve_order` (--deterministic) makes each worker's rows arrive in the same order every
    time; Ray then ignores locality when it splits them."""
    current = DataContext.get_current().execution_options
    return ExecutionOptions(
        resource_limits=current.resource_limits,
        preserve_order=preserve_order or current.preserve_order,
        verbose_progress=current.verbose_progress,
    )


# ---------------------------------------------------------------- Ray Data: the Parquet reader


@contextlib.contextmanager
def parquet_reader_v1() -> Iterator[None]:
    """Build a read_parquet with Ray's first Parquet reader. Ray 2.60's default one (DataSource V2,
    the default since ray-project/ray#63326) starts 32 footer-reading actors on every execution
    of the dataset, i.e. every epoch: measured here, 1 s before the first batch and CPU taken from
    decoding, against 0.06 s (bench/RESULTS.md)."""
    context = DataContext.get_current()
    default = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        yield
    finally:
        context.use_datasource_v2 = default


# ---------------------------------------------------------------- Ray Data: a block order seeded per epoch


def randomize_block_order(rows: ray.data.Dataset, seed: RandomSeedConfig) -> ray.data.Dataset:
    """`rows.randomize_block_order(seed=seed)` keeping `seed` itself: Ray rebuilds the config it is
    given as a plain RandomSeedConfig (RandomSeedConfig.create_seed_config), which would drop the
    epoch-seeded get_seed_tuple of raymc's EpochBlockOrder. This puts it back on the private, frozen
    logical operator (`Dataset._logical_plan.dag.seed_config`), as the operator's own __post_init__ sets it."""
    shuffled = rows.randomize_block_order(seed=seed)
    operator = shuffled._logical_plan.dag
    if not hasattr(operator, "seed_config"):
        raise RaymcError(f"this Ray's randomize_block_order operator ({type(operator).__name__}) has no seed_config")
    object.__setattr__(operator, "seed_config", seed)
    return shuffled


# ---------------------------------------------------------------- errors from Ray tasks

# How a raymc error raised in a Ray Data task reaches the driver: only as its traceback's text
# (Ray Data wraps it in a UserCodeException); the last such line is the one that stopped the run.
RAYMC_ERROR_LINE = re.compile(r"^raymc(?:\.\w+)+\.\w+: (.+)$", re.MULTILINE)


def raymc_cause(error: TrainingFailedError) -> str | None:
    """The message of the RaymcError behind a failed Train run (e.g. a bad image under
    --on-bad-image fail, raised in a worker or in a Ray Data task feeding it), or None when
    the run failed for another reason (a killed worker, a lost node)."""
    for failure in _failures(error):
        if isinstance(failure, RaymcError):
            return str(failure)
        found = RAYMC_ERROR_LINE.findall(str(failure))
        if found:
            return found[-1]
    return None


def failure_text(error: TrainingFailedError) -> str:
    """The text of every failure behind a failed Train run (its own text names none of them)."""
    return "\n".join(str(failure) for failure in _failures(error))


def _failures(error: TrainingFailedError) -> list[BaseException]:
    """The workers' and the controller's errors behind a failed Train run, unwrapped."""
    failures = [*getattr(error, "worker_failures", {}).values(), getattr(error, "controller_failure", None)]
    return [unwrapped_error(failure) for failure in failures if failure is not None]


def unwrapped_error(error: BaseException) -> BaseException:
    """The exception a RayTaskError carries: Ray's wrapper subclasses the original's class too, but
    its text is Ray's traceback, not the original message."""
    while isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        error = error.cause
    return error


# ---------------------------------------------------------------- Ray Tune: placement groups of stopped trials


def remove_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor has died; return how many.

    When Tune stops a trial (ASHA, an error), the trial's Train controller dies with it, and the
    placement group it made for its workers stays: under Train V2 a group lives as long as the job
    driver (ray-project/ray#53921), and Train's own PlacementGroupCleaner (ray-project/ray#58515)
    asks the dashboard's State API, which times out on a loaded machine. On a small cluster the
    leaked group's CPUs then starve the next trial's Ray Data, which hangs. This reads the groups'
    creators from the GCS through Ray's private `ray._private.state`; if that API changes, it
    removes nothing and says so in the log.
    """
    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        raw_table = state._connect_and_get_accessor().get_placement_group_table()
        table = [gcs_pb2.PlacementGroupTableData.FromString(raw) for raw in raw_table]
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


# ---------------------------------------------------------------- Ray Tune: searcher and scheduler internals
# raymc's PruningOptunaSearch and PruningASHAScheduler tell Optuna which trials ASHA stopped
# (Ray's OptunaSearch tells every stopped trial as COMPLETE with its last value) and put restored
# trials back on ASHA's rungs (Tune saves no scheduler state). Both need these private attributes.


def optuna_trials(searcher: OptunaSearch) -> dict[str, optuna.Trial]:
    """Tune trial id -> the Optuna trial OptunaSearch asked for it."""
    return searcher._ot_trials


def optuna_study(searcher: OptunaSearch) -> optuna.Study | None:
    """The study OptunaSearch created once it had a space (None before)."""
    return searcher._ot_study


def completed_trial_ids(searcher: OptunaSearch) -> set[str]:
    """The trials OptunaSearch has told Optuna about already."""
    return searcher._completed_trials


SEARCHER_SPACE_ATTR = "_space"  # OptunaSearch's space: a define-by-run function may not pickle


def asha_rungs(scheduler: AsyncHyperBandScheduler, trial_id: str) -> list[tuple[float, dict[str, float]]]:
    """(milestone, {trial id: recorded value}) of each rung of the trial's bracket."""
    return scheduler._trial_info[trial_id]._rungs


def asha_metric_sign(scheduler: AsyncHyperBandScheduler) -> float:
    """1 when ASHA maximizes, -1 when it minimizes: rungs record metric x sign."""
    return scheduler._metric_op


def asha_time_limit(scheduler: AsyncHyperBandScheduler) -> tuple[str, float]:
    """(time attribute, max_t) of the scheduler."""
    return scheduler._time_attr, scheduler._max_t
