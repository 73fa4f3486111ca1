"""Search spaces load and validate; bad spaces fail naming the parameter and the file; the
searcher reports trials that ASHA stopped as PRUNED. No Ray cluster needed."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from raymc.config import TrainConfig, build_config
from raymc.errors import ConfigError
from raymc.ray_compat import asha_rungs
from raymc.resources import plan_trials
from raymc.tune.cli import experiment_config, get_args_parser, main
from raymc.tune.search import PruningASHAScheduler, PruningOptunaSearch
from raymc.tune.space import check_space, load_space, sample_params, shipped_space_dir, space_names
from tests.helpers import raymc_stderr

SPACE_FILES = [shipped_space_dir() / f"{name}.py" for name in space_names(shipped_space_dir())]
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def write_space(tmp_path: Path, body: str, name: str = "space.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
def test_every_space_file_loads_and_its_draws_make_valid_trial_configs(path):
    if path.stem == "sdresnet_imagenet" and "pL" not in FIELDS:
        pytest.skip("TrainConfig has no pL field yet (it comes with the ImageNet issue)")
    space = load_space(str(path))
    assert set(space.fixed) <= FIELDS
    base = experiment_config({}, yaml_path=None, space=space, metric="val_acc")
    check_space(space, base, probes=32)  # raises if any draw is refused
    for params in sample_params(space, 8):
        assert params and set(params) <= FIELDS


def test_sdresnet_imagenet_space_searches_the_issue_ranges():
    if "pL" not in FIELDS:
        pytest.skip("TrainConfig has no pL field yet (it comes with the ImageNet issue)")
    space = load_space(str(shipped_space_dir() / "sdresnet_imagenet.py"))
    dists = space.optuna_space()
    assert set(dists) == {"lr", "pL", "mixup", "label_smoothing", "weight_decay"}
    assert dists["lr"].log and dists["weight_decay"].log
    assert (dists["pL"].low, dists["pL"].high) == (0.5, 1.0)
    assert (dists["mixup"].low, dists["mixup"].high) == (0.0, 0.4)
    assert (dists["label_smoothing"].low, dists["label_smoothing"].high) == (0.0, 0.2)


def test_mcresnet_nyu_space_is_define_by_run_with_a_conditional_parameter():
    space = load_space(str(shipped_space_dir() / "mcresnet_nyu.py"))
    assert space.define_by_run is not None
    draws = sample_params(space, 40)
    names = set().union(*draws)
    assert {"lr", "stream1_lr", "stream2_lr", "fusion", "label_smoothing", "mixup"} <= names
    assert all(("dropout" in d) == (d["fusion"] == "concat") for d in draws)


def test_a_space_is_found_by_name_in_tune_spaces():
    assert Path(load_space("demo_nyu").path).name == "demo_nyu.py"


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "from ray import tune\nSPACE = {'learning_rate': tune.loguniform(1e-3, 1e-1)}",
            "unknown parameter 'learning_rate'",
        ),
        ("from ray import tune\nSPACE = {'lr': tune.uniform(0.1, 0.01)}", "parameter 'lr' has an empty range"),
        ("from ray import tune\nSPACE = {'mixup': tune.uniform(0.2, 0.2)}", "parameter 'mixup' has an empty range"),
        ("from ray import tune\nSPACE = {'fusion': tune.choice([])}", "parameter 'fusion' has no choices"),
        ("SPACE = {'lr': {'grid_search': [0.1, 0.2]}}", "parameter 'lr' uses grid_search"),
        (
            "from ray import tune\nSPACE = {'epochs': tune.randint(1, 5)}",
            "parameter 'epochs' is set for the whole experiment",
        ),
        ("def space(trial):\n    trial.suggest_float('lr', 0.1, 0.01, log=True)", "parameter 'lr' has an empty range"),
        ("def space(trial):\n    trial.suggest_float('lr', 0.0, 0.1, log=True)", "parameter 'lr' is log-scaled"),
        ("def space(trial):\n    trial.suggest_float('lrr', 0.01, 0.1)", "unknown parameter 'lrr'"),
        ("def space(trial):\n    trial.suggest_categorical('fusion', [])", "parameter 'fusion' has no choices"),
        ("def space(trial):\n    return {'bogus': 1}", "unknown parameter 'bogus'"),
        ("def space(trial):\n    raise KeyError('oops')", "space(trial) raised KeyError"),
        (
            "FIXED = {'imagesize': 32}\ndef space(trial):\n    trial.suggest_float('lr', 0.01, 0.1)",
            "unknown setting 'imagesize'",
        ),
        ("x = 1", "define either SPACE"),
        ("SPACE = {}\ndef space(trial):\n    pass", "not both"),
        ("from ray import tune\nSPACE = {'lr': tune.loguniform(0, 1)}", "(line 2): could not be loaded"),
    ],
)
def test_bad_spaces_fail_naming_the_parameter_and_the_file(tmp_path, body, message):
    path = write_space(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_space(path)
    assert path in str(caught.value) and message in str(caught.value)


def test_a_space_whose_values_trials_would_refuse_fails_before_any_trial(tmp_path):
    path = write_space(tmp_path, "from ray import tune\nSPACE = {'label_smoothing': tune.uniform(0.5, 1.5)}")
    space = load_space(path)
    with pytest.raises(ConfigError, match="--label-smoothing") as caught:
        check_space(space, build_config({}))
    assert path in str(caught.value)


def test_cli_refuses_a_bad_space_with_exit_code_2_before_starting_ray(tmp_path, capsys):
    path = write_space(tmp_path, "from ray import tune\nSPACE = {'lr': tune.uniform(1.0, 0.5)}")
    assert main(["--space", path]) == 2
    err = raymc_stderr(capsys)
    assert err.startswith("error: ") and "'lr'" in err and path in err


def test_cli_takes_both_spellings_and_every_training_flag_once():
    parser = get_args_parser()
    dashed = vars(
        parser.parse_args(
            ["--num-samples", "3", "--workers-per-trial", "2", "--grace-period", "2", "--label-smoothing", "0.05"]
        )
    )
    underscored = vars(
        parser.parse_args(
            ["--num_samples", "3", "--workers_per_trial", "2", "--grace_period", "2", "--label_smoothing", "0.05"]
        )
    )
    assert dashed == underscored
    assert dashed["num_samples"] == 3 and dashed["num_workers"] == 2 and dashed["label_smoothing"] == 0.05
    for flag in (
        "--epochs",
        "--out",
        "--name",
        "--gpus-per-worker",
        "--max-concurrent-trials",
        "--reduction-factor",
        "--resume",
    ):
        assert flag in parser.format_help()


def test_experiment_settings_fixed_by_the_space_yield_to_flags():
    space = load_space("demo_nyu")
    config = experiment_config({"epochs": 3}, yaml_path=None, space=space, metric="val_mean_class_acc")
    assert config.epochs == 3 and config.image_size == space.fixed["image_size"]
    assert config.num_workers == 1  # one worker per trial unless told otherwise
    assert config.monitor == "val_mean_class_acc"  # best_model.pt is chosen by the searched metric


@pytest.mark.parametrize(
    "cluster, flags, max_concurrent, expected",
    [
        ({"CPU": 2}, {}, None, (1, 1, 0.0)),
        ({"CPU": 16}, {}, None, (8, 1, 0.0)),
        ({"CPU": 2}, {}, 2, (2, 0.5, 0.0)),
        ({"CPU": 64, "GPU": 8}, {"num_workers": 2}, None, (4, 4, 1.0)),
        ({"CPU": 64, "GPU": 8}, {"num_workers": 1, "gpus_per_worker": 0.5}, None, (16, 2, 0.5)),
    ],
)
def test_concurrency_fills_the_cluster_and_leaves_half_the_cpus_to_ray_data(cluster, flags, max_concurrent, expected):
    config = build_config({"num_workers": 1, **flags})
    trials, resources = plan_trials(config, cluster, max_concurrent)
    assert (trials, resources.cpus, resources.gpus) == expected


# ---------------------------------------------------------------- pruned trials reach Optuna as PRUNED


def simulate(searcher, scheduler, values: dict[str, list[float]], max_t: int, metric: str = "val_acc") -> None:
    """Feed epoch results of trials, one trial at a time, the way TuneController does."""
    for trial_id, per_epoch in values.items():
        trial = SimpleNamespace(trial_id=trial_id)
        searcher.suggest(trial_id)
        scheduler.on_trial_add(None, trial)
        result = {}
        for epoch, value in enumerate(per_epoch, start=1):
            result = {"epoch": epoch, "training_iteration": epoch, metric: value}
            decision = scheduler.on_trial_result(None, trial, result)
            if decision == TrialScheduler.STOP:
                break
            searcher.on_trial_result(trial_id, result)
        scheduler.on_trial_complete(None, trial, result)
        searcher.on_trial_complete(trial_id, result=result)


def make_pair(max_t: int = 4, metric: str = "val_acc", mode: str = "max"):
    searcher = PruningOptunaSearch(
        {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}, metric=metric, mode=mode, seed=0
    )
    scheduler = PruningASHAScheduler(
        searcher=searcher,
        time_attr="epoch",
        metric=metric,
        mode=mode,
        max_t=max_t,
        grace_period=1,
        reduction_factor=2,
    )
    return searcher, scheduler


def test_trials_asha_stops_are_pruned_in_the_study_and_finished_ones_complete():
    searcher, scheduler = make_pair()
    simulate(
        searcher,
        scheduler,
        {"good": [0.5, 0.6, 0.7, 0.8], "bad": [0.1, 0.2, 0.3, 0.4], "better": [0.6, 0.7, 0.8, 0.9]},
        max_t=4,
    )
    assert searcher.trial_states() == {"good": "COMPLETE", "bad": "PRUNED", "better": "COMPLETE"}
    trials = {t.number: t for t in searcher.study.get_trials()}
    bad = trials[searcher._ot_trials["bad"].number]
    assert bad.state == TrialState.PRUNED
    assert bad.intermediate_values == {1: 0.1}  # the value that got it stopped, at its epoch
    assert trials[searcher._ot_trials["better"].number].value == 0.9


def test_ray_optuna_search_alone_would_report_the_stopped_trial_as_complete():
    """The bias this module fixes: Ray's OptunaSearch tells a stopped trial COMPLETE."""
    plain = OptunaSearch(
        {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}, metric="val_acc", mode="max", seed=0
    )
    plain.suggest("bad")
    plain.on_trial_complete("bad", result={"epoch": 1, "training_iteration": 1, "val_acc": 0.1})
    assert plain._ot_study.get_trials()[0].state == TrialState.COMPLETE


def test_a_trial_reaching_max_t_is_not_killed_by_asha():
    searcher, scheduler = make_pair(max_t=2)
    trial = SimpleNamespace(trial_id="t")
    searcher.suggest("t")
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, {"epoch": 2, "val_acc": 0.3}) == TrialScheduler.CONTINUE


def test_searcher_state_round_trips_without_the_space(tmp_path):
    space = load_space(str(shipped_space_dir() / "mcresnet_nyu.py"))
    searcher = PruningOptunaSearch(space.optuna_space(), metric="val_acc", mode="max", seed=0)
    scheduler = PruningASHAScheduler(
        searcher=searcher, time_attr="epoch", metric="val_acc", mode="max", max_t=2, grace_period=1
    )
    simulate(searcher, scheduler, {"a": [0.5, 0.6], "b": [0.1, 0.2]}, max_t=2)
    searcher.save(str(tmp_path / "state.pkl"))  # a define-by-run function from a file: not picklable by reference
    restored = PruningOptunaSearch()
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.trial_states() == searcher.trial_states() == {"a": "COMPLETE", "b": "PRUNED"}


def test_a_resumed_asha_puts_restored_trials_back_on_its_rungs():
    """Tune restores the searcher but not the scheduler: the rungs are rebuilt from the study."""
    searcher, scheduler = make_pair()
    simulate(searcher, scheduler, {"a": [0.5, 0.6, 0.7, 0.8], "b": [0.6, 0.7, 0.8, 0.9]}, max_t=4)
    fresh = PruningASHAScheduler(
        searcher=searcher, time_attr="epoch", metric="val_acc", mode="max", max_t=4, grace_period=1, reduction_factor=2
    )
    for trial_id in ("a", "b"):  # what TuneController.resume does with restored trials
        fresh.on_trial_add(None, SimpleNamespace(trial_id=trial_id))
    late = SimpleNamespace(trial_id="late")
    searcher.suggest("late")
    fresh.on_trial_add(None, late)
    assert fresh.on_trial_result(None, late, {"epoch": 1, "val_acc": 0.2}) == TrialScheduler.STOP


@pytest.mark.parametrize(
    "metric, mode, values, told",
    [("val_acc", "max", [0.5, 0.8, 0.6], 0.8), ("val_loss", "min", [0.9, 0.6, 0.7], 0.6)],
)
def test_a_completed_trial_reaches_optuna_with_its_best_epoch(metric, mode, values, told):
    """raymc ranks trials by their best epoch (results tables, best_config): Optuna learns the same value."""
    searcher, scheduler = make_pair(max_t=3, metric=metric, mode=mode)
    simulate(searcher, scheduler, {"t": values}, max_t=3, metric=metric)
    (trial,) = searcher.study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.value == told
    assert trial.intermediate_values == dict(enumerate(values, start=1))


def test_a_first_epoch_preemption_report_of_nan_is_skipped_by_optuna_and_asha():
    """save_before_preemption reports epoch 0 with NaN metrics: no rung, no intermediate value."""
    searcher, scheduler = make_pair()
    trial = SimpleNamespace(trial_id="t")
    searcher.suggest("t")
    scheduler.on_trial_add(None, trial)
    preempted = {"epoch": 0, "training_iteration": 1, "val_acc": float("nan"), "best_epoch": 0}
    assert scheduler.on_trial_result(None, trial, preempted) == TrialScheduler.CONTINUE
    searcher.on_trial_result("t", preempted)
    assert searcher.intermediate_values("t") == {}
    assert all(not recorded for _, recorded in asha_rungs(scheduler, "t"))
    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.65], start=1):
        result = {"epoch": epoch, "training_iteration": epoch + 1, "val_acc": value}
        assert scheduler.on_trial_result(None, trial, result) == TrialScheduler.CONTINUE
        searcher.on_trial_result("t", result)
    searcher.on_trial_complete("t", result=result)
    (told,) = searcher.study.get_trials()
    assert told.state == TrialState.COMPLETE and told.value == 0.7
