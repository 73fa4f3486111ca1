"""What a failed Train run says: the raymc error behind it, wherever it was raised."""

from __future__ import annotations

import ray
from ray.train import ControllerError, WorkerGroupError

from raymc.data.imagenet import BadImageError
from raymc.ray_compat import raymc_cause

# The text a worker failure holds when a Ray Data task raised BadImageError (abridged from a real run).
DATA_TASK_FAILURE = """ray::SplitCoordinator.get() (pid=5070, ip=127.0.0.1)
  File "/work/main/raymc/data/imagenet.py", line 272, in _bad_image
    raise BadImageError(path, f"cannot decode: {e}") from e
raymc.data.imagenet.BadImageError: /data/train/n01/x.JPEG: bad image (cannot decode: image file is truncated)

The above exception was the direct cause of the following exception:

ray::MapBatches(decode_batch)->MapBatches(_train_view)() (pid=5166, ip=127.0.0.1)
ray.exceptions.UserCodeException: UDF failed to process a data block."""


def test_a_raymc_error_in_a_data_task_is_found_in_the_failure_text():
    error = WorkerGroupError("rank 0 failed", {0: RuntimeError(DATA_TASK_FAILURE)})
    assert raymc_cause(error) == "/data/train/n01/x.JPEG: bad image (cannot decode: image file is truncated)"


def test_a_raymc_error_raised_in_a_worker_is_returned_as_it_is():
    bad = BadImageError("/data/train/n01/y.JPEG", "not an image")
    error = WorkerGroupError("rank 1 failed", {0: RuntimeError("other rank"), 1: bad})
    assert raymc_cause(error) == str(bad)


def test_a_raymc_error_wrapped_by_a_ray_task_gives_its_own_message():
    """What a worker holds when a Ray Data task raised it: Ray's wrapper is a BadImageError too."""
    bad = BadImageError("/data/train/n01/z.JPEG", "not an image")
    wrapped = ray.exceptions.RayTaskError("SplitCoordinator.get", "Ray's traceback text", bad).as_instanceof_cause()
    assert isinstance(wrapped, BadImageError) and str(bad) not in str(wrapped).splitlines()[0]
    assert raymc_cause(WorkerGroupError("rank 0 failed", {0: wrapped})) == str(bad)


def test_other_failures_have_no_raymc_cause():
    assert raymc_cause(WorkerGroupError("killed", {0: RuntimeError("The actor died unexpectedly")})) is None
    assert raymc_cause(ControllerError(RuntimeError("placement group timed out"))) is None
