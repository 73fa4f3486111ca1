"""raymc: train and tune image classifiers (RGB-D MCResNet, stochastic-depth ResNet) on Ray."""

import os

# A local Ray instance that raymc starts binds to 127.0.0.1 only. Ray reads this switch when it
# is first imported, so it is set here, before any raymc module imports ray. It is left alone
# when RAY_ADDRESS points at a running cluster, whose nodes must advertise reachable addresses.
if "RAY_ADDRESS" not in os.environ:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from raymc.errors import ConfigError, DataError, RaymcError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "RaymcError", "__version__"]
