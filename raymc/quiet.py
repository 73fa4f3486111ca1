"""What a raymc run prints of other libraries' logs: every filter of third-party output, in one place.

A run prints raymc's own lines (start, one per epoch, the summary, where the dashboard and Ray's
logs are) and Ray's warnings and errors; Ray's routine INFO lines stay in the log files of Ray's
session folder. Each entry below names what it silences and why. This module imports no Ray, so
Ray Data's worker processes can load its filter cheaply.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

RAY_DATA_LOGGING_CONFIG = Path(__file__).with_name("ray_data_logging.yaml")

# Set for every process of a local Ray that raymc starts (raymc.cluster.start_local_ray).
LOCAL_RAY_ENV = {
    # Ray Data in the SplitCoordinator actors logs an execution plan, a start and an end line for
    # every dataset pass (three per dataset per epoch): Ray Data's console shows warnings only.
    "RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING_CONFIG),
    # Ray Train's PreemptionWatcher is created with arguments in the object store and restarts,
    # which Ray reports as an ERROR line on every run (ray-project/ray#53727). A local Ray (one
    # machine, started by raymc) is never preempted, so the watcher has nothing to watch.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}

PROGRESS_BARS_OFF_NOTICE = "Progress bars disabled"  # raymc turns them off; its epoch lines say enough


class RayDataConsoleFilter(logging.Filter):
    """Drops Ray Data's notice that progress bars are disabled (raymc disables them on purpose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(PROGRESS_BARS_OFF_NOTICE)


def quiet_driver() -> None:
    """Ray Data's console logging for this process, set before Ray Data is imported (it reads the
    setting once, at import). A value the user set is kept."""
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING_CONFIG))


def quiet_train_worker() -> None:
    """Ray Train workers log every rank's full report ("Reporting training result ...:
    TrainingReport(...)") at INFO each epoch. RunConfig's LoggingConfig level (ray-project/ray#61550)
    filters only loggers named ray.train*, and this one is named after its file path
    (logging.getLogger(__file__) in ray.train.v2._internal.execution.context), so raymc raises
    that logger's own level."""
    from ray.train.v2._internal.execution import context

    context.logger.setLevel(logging.WARNING)
