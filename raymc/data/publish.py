"""Publishing a prepared data set: readers never see a half-written one under the output path.

Every `prepare_*` checks its output path before any work, runs its shard tasks into a staging
sibling, writes dataset_info.json (the marker readers trust) last, and swaps the staging folder in
only once complete. A failed or interrupted run cancels its remaining shard tasks, so none writes
after it returns, and leaves the old output as it was.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.remote_function import RemoteFunction

from raymc.errors import DataError, RaymcError

INFO_FILE = "dataset_info.json"  # beside the Parquet shards; Ray's read_parquet skips it


def write_info(folder: Path, info: dict) -> None:
    """The dataset_info.json that training reads (classes, counts, statistics, source)."""
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def check_output_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse an output path that is a file, or a folder holding data unless overwriting."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path is a file (key 'out'); choose a folder for --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(
            f"{out}: output folder already holds data (key 'out'); pass --overwrite "
            "(overwrite=True) to replace it, or choose another --out"
        )


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out`, removed if the work inside fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit_dir(staging: Path, out: Path) -> None:
    """Swap the complete staging folder in as `out`; an old `out` is removed only afterwards."""
    if not out.exists():
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def run_shard_tasks(
    task: RemoteFunction, jobs: Sequence[object], *, check: Callable[[Any], None] | None = None
) -> list[Any]:
    """Run `task` once per job in parallel and return the results in job order.

    `check` sees each result as its task finishes and may raise (a shard that met a bad file); a
    raymc error raised in a task is raised here as itself, so the CLIs print its one-line message.
    On any error, a task's or check's, the remaining tasks are cancelled and awaited, so none
    writes into the staging folder after we return and it is removed.
    """
    refs = [task.remote(job) for job in jobs]
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = refs
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result = _get(done[0])
            if check is not None:
                check(result)
            results[position[done[0]]] = result
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        ray.wait(pending, num_returns=len(pending))
        raise
    return results


def _get(ref: ray.ObjectRef) -> Any:
    """ray.get, but a raymc error raised in the task comes back as itself: Ray's RayTaskError
    subclasses the error's class, yet its text is Ray's traceback, which the CLIs would print."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        # Imported on failure only: ray_compat loads Ray Tune, which the workers importing this module need not.
        from raymc.ray_compat import unwrapped_error

        cause = unwrapped_error(exc)
        if isinstance(cause, RaymcError):
            raise cause from exc
        raise
