"""Search spaces: plain Python files whose parameter names are TrainConfig fields, loaded and
checked before any trial starts (names, ranges, and a few drawn parameter sets as trials).

A space file defines `SPACE = {...}` (Ray Tune domains) or `def space(trial): ...` (Optuna
define-by-run), and optionally `FIXED = {...}` settings for every trial. raymc's own spaces live in
the top-level `tune_spaces/` folder, shipped in the wheel as the package `raymc.tune_spaces`.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import inspect
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Domain, Float, Integer, LogUniform

from raymc.config import PLACEMENT_SETTINGS, SETTING_NAMES, TrainConfig, with_params
from raymc.errors import ConfigError

CHECKOUT_SPACE_DIR = Path(__file__).resolve().parents[2] / "tune_spaces"
DEFAULT_SPACE = "demo_nyu"
# Settings that hold for a whole experiment: where it is written, its resources, and --epochs,
# which is ASHA's max_t. A space may not search them.
NOT_SEARCHABLE = frozenset(PLACEMENT_SETTINGS) | {"epochs"}
SPACE_PROBES = 16  # parameter sets drawn to check a space before any trial starts


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
        return {
            "name": name,
            "low": domain.lower,
            "high": domain.upper,
            "log": isinstance(domain.get_sampler(), LogUniform),
        }
    if isinstance(domain, Categorical):
        return {"name": name, "choices": domain.categories}
    return {"name": name}


def shipped_space_dir() -> Path:
    """raymc's own tune_spaces/: in an installed wheel the package `raymc.tune_spaces`, in a checkout
    (or an editable install) the top-level folder it is built from."""
    try:
        return Path(str(importlib.resources.files("raymc.tune_spaces")))
    except ModuleNotFoundError:  # running from a checkout that was never installed
        return CHECKOUT_SPACE_DIR


def space_names(folder: Path) -> list[str]:
    """The spaces a folder holds: its .py files, package files aside."""
    return sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_")) if folder.is_dir() else []


def find_space(name: str) -> Path:
    """A space file: a path, or a name looked up in ./tune_spaces and in raymc's own spaces."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.stem if path.suffix == ".py" else path.name
    shipped = shipped_space_dir()
    for folder in (Path("tune_spaces"), shipped):
        if (folder / f"{stem}.py").is_file():
            return folder / f"{stem}.py"
    available = ", ".join(space_names(shipped))
    raise ConfigError(f"--space {name}: no such file; give a path to a .py file or one of: {available}")


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
                raise ConfigError(
                    f"{path}: parameter '{key}' uses grid_search, which Optuna cannot sample; use tune.choice"
                )
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


def check_space(space: SearchSpace, base: TrainConfig, *, probes: int = SPACE_PROBES) -> None:
    """Refuse a space whose parameter sets the trials would refuse (e.g. label_smoothing 1.5)."""
    for params in sample_params(space, probes):
        try:
            with_params(base, params, source=space.path)
        except ConfigError as exc:
            raise ConfigError(f"{space.path}: a trial with {format_params(params)} would be refused: {exc}") from None


def format_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
