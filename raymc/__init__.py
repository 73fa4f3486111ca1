"""raymc: train and tune image classifiers (RGB-D MCResNet, stochastic-depth ResNet) on Ray."""

import os
import sys
import types

# A local Ray instance that raymc starts binds to 127.0.0.1 only. Ray reads this switch when it
# is first imported, so it is set here, before any raymc module imports ray. It is left alone
# when RAY_ADDRESS points at a running cluster, whose nodes must advertise reachable addresses.
if "RAY_ADDRESS" not in os.environ:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from raymc.quiet import quiet_driver  # noqa: E402

quiet_driver()  # before Ray Data is imported: it reads its logging settings once

from raymc.errors import ConfigError, DataError, RaymcError  # noqa: E402

__version__ = "0.1.0"
# The Python API (raymc.api) is imported on first use, so `import raymc` and the CLIs that do
# not need it (prepare, results) stay free of torch, Ray Train and matplotlib at start-up.
_API = ("RunResult", "analyze_pathways", "evaluate", "fit", "load_model", "predict")
__all__ = ["ConfigError", "DataError", "RaymcError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from raymc import api

        return getattr(api, name)
    raise AttributeError(f"module 'raymc' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`raymc.evaluate` and `raymc.predict` name both an API function and a CLI module
    (`python -m raymc.evaluate`). Importing a submodule binds it as an attribute of its package,
    which would hide the function; this package declines that binding for API names, so
    `raymc.evaluate(...)` stays the function and the CLI module stays in sys.modules."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
