"""The search: Optuna (TPE or random, seeded) proposes trials, ASHA stops poor ones early, and
Optuna hears which trials were stopped (PRUNED) rather than finished.
"""

from __future__ import annotations

import math
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pyarrow.fs
from optuna.trial import TrialState
from ray import tune
from ray.air.constants import TRAINING_ITERATION
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from raymc import storage
from raymc.ray_compat import (
    SEARCHER_SPACE_ATTR,
    asha_metric_sign,
    asha_rungs,
    asha_time_limit,
    completed_trial_ids,
    optuna_study,
    optuna_trials,
)
from raymc.results import DIVERGED
from raymc.tune.space import SearchSpace

if TYPE_CHECKING:
    from raymc.tune.experiment import SearchSettings


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial the scheduler stopped early (or one that diverged)
    was PRUNED.

    Ray's OptunaSearch tells every stopped trial as COMPLETE with its last value, so TPE takes
    a trial cut after one epoch for a finished one and learns from a value the trial never
    reached at the end. The scheduler marks the trials it stops (`mark_pruned`); they reach Optuna
    as PRUNED with their intermediate values, which TPE ranks below completed trials. Intermediate
    values are reported at the trial's `epoch`, which stays right when a trial resumes; non-finite
    ones (a first-epoch preemption's NaN) are left out. A completed trial reaches Optuna with its
    best epoch's value, the one raymc ranks trials by.
    """

    def __init__(self, *args: Any, step_attr: str = "epoch", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._step_attr = step_attr
        self._pruned: set[str] = set()

    def mark_pruned(self, trial_id: str) -> None:
        self._pruned.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in completed_trial_ids(self):
            return super().on_trial_result(trial_id, result)
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or trial_id in completed_trial_ids(self) or not result:
            return super().on_trial_complete(trial_id, result=result, error=error)
        if trial_id not in self._pruned and not result.get(DIVERGED):
            return super().on_trial_complete(trial_id, result=self._with_best_value(trial_id, result))
        self._report(trial_id, result)  # the result that made the scheduler stop it
        optuna_study(self).tell(optuna_trials(self)[trial_id], state=TrialState.PRUNED)
        completed_trial_ids(self).add(trial_id)

    def _report(self, trial_id: str, result: Mapping[str, Any]) -> None:
        value = result.get(self.metric)
        step = result.get(self._step_attr, result.get(TRAINING_ITERATION))
        if value is not None and step is not None and math.isfinite(value):
            optuna_trials(self)[trial_id].report(float(value), int(step))

    def _with_best_value(self, trial_id: str, result: dict) -> dict:
        """The final result with the trial's best epoch's value in place of its last epoch's: raymc ranks
        trials by their best epoch (results tables, best_config), so Optuna learns from the same value."""
        if isinstance(self.metric, list):
            return result
        values = dict(self.intermediate_values(trial_id))
        step, last = result.get(self._step_attr, result.get(TRAINING_ITERATION)), result.get(self.metric)
        if step is not None and last is not None:
            values[int(step)] = float(last)
        finite = [value for value in values.values() if math.isfinite(value)]
        if not finite:
            return result
        return {**result, self.metric: max(finite) if self.mode == "max" else min(finite)}

    def intermediate_values(self, trial_id: str) -> dict[int, float]:
        """The values reported for a trial so far, by epoch, as the Optuna study holds them."""
        trial, study = optuna_trials(self).get(trial_id), optuna_study(self)
        if trial is None or study is None:
            return {}
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        return dict(frozen.intermediate_values)

    def trial_states(self) -> dict[str, str]:
        """Optuna's state of each Tune trial: COMPLETE, PRUNED, FAIL or RUNNING."""
        study = optuna_study(self)
        if study is None:
            return {}
        by_number = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
        return {trial_id: by_number.get(t.number, "RUNNING") for trial_id, t in optuna_trials(self).items()}

    @property
    def study(self) -> optuna.Study | None:
        return optuna_study(self)

    def save(self, checkpoint_path: str) -> None:
        # The space is left out: a define-by-run function from a space file cannot be pickled by
        # reference, and a restored searcher keeps the space it was created with (tuner.pkl).
        state = {key: value for key, value in self.__dict__.items() if key != SEARCHER_SPACE_ATTR}
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
        for milestone, recorded in asha_rungs(self, trial_id):
            epoch = math.ceil(milestone)
            if epoch in values and trial_id not in recorded:
                recorded[trial_id] = asha_metric_sign(self) * values[epoch]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision != TrialScheduler.STOP:
            return decision
        time_attr, max_t = asha_time_limit(self)
        if result.get(time_attr, 0) >= max_t:
            return TrialScheduler.CONTINUE
        if self._searcher is not None:
            self._searcher.mark_pruned(trial.trial_id)
        return decision


def load_searcher(experiment_dir: str) -> PruningOptunaSearch | None:
    """The searcher as Tune last saved it in an experiment folder (its Optuna study included)."""
    filesystem, root = storage.filesystem(experiment_dir)
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


def trial_dirname(trial: Any) -> str:
    """A trial's folder is named after its id alone (Tune's default adds the parameters)."""
    return trial.trial_id


def build_tuner(
    trainable: Any,
    *,
    space: SearchSpace,
    settings: SearchSettings,
    seed: int,
    max_t: int,
    name: str,
    storage_path: str,
    max_concurrent: int,
    callbacks: list[tune.Callback],
) -> tune.Tuner:
    """A new Tuner: seeded Optuna search and ASHA on --metric, `epoch` as ASHA's time (max_t epochs)."""
    searcher = PruningOptunaSearch(
        space.optuna_space(),
        metric=settings.metric,
        mode=settings.resolved_mode,
        sampler=make_sampler(settings.sampler, seed=seed, num_samples=settings.num_samples),
    )
    scheduler: TrialScheduler = FIFOScheduler()
    if settings.scheduler == "asha":
        scheduler = PruningASHAScheduler(
            searcher=searcher,
            time_attr="epoch",
            metric=settings.metric,
            mode=settings.resolved_mode,
            max_t=max_t,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=settings.num_samples,
        max_concurrent_trials=max_concurrent,
        trial_dirname_creator=trial_dirname,
    )
    path, filesystem = storage.ray_location(storage_path)
    run_config = tune.RunConfig(
        name=name, storage_path=path, storage_filesystem=filesystem, verbose=0, callbacks=callbacks
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)
