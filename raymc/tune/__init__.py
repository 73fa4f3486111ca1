"""Hyperparameter search: Ray Tune runs trials (each a Ray Train run of the one loop), Optuna
proposes them, ASHA stops poor ones early.

    space.py       search-space files: loading and checking them
    search.py      PruningOptunaSearch, PruningASHAScheduler, the sampler and the Tuner
    experiment.py  settings, the experiment folder, run_search, what is written when it ends
    cli.py         `python -m raymc.tune` (run by __main__.py)
"""

from raymc.tune.experiment import SearchSettings, run_search
from raymc.tune.space import SearchSpace, load_space

__all__ = ["SearchSettings", "SearchSpace", "load_space", "run_search"]
