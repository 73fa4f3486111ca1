"""Publishing a prepared data set: readers never see a half-written one under the output path.

Every `prepare_*` checks its output path (`check_output`) before any work, then runs its shard
tasks and writes dataset_info.json into the folder `publishing(out)` gives it:
- a local `out` is staged in a sibling folder that replaces `out` (a rename) only once complete;
- object stores have no rename, so a URI `out` is a prefix holding generations: each prepare
  writes a new `out/<generation>/` (a UTC time stamp and a random suffix) and, last, the marker
  `out/_LATEST.json` ({"generation": ...}) naming it; old generations are deleted only after the
  marker names the new one. Readers resolve a URI through the marker (`live_folder`) and trust
  nothing else, so a prefix with no marker is refused as unfinished.
A failed or interrupted run cancels its remaining shard tasks, so none writes after it returns,
removes what it wrote, and leaves the old data set whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.remote_function import RemoteFunction

from raymc import storage
from raymc.errors import DataError, RaymcError

logger = logging.getLogger(__name__)

INFO_FILE = "dataset_info.json"  # beside the Parquet shards; Ray's read_parquet skips it
MARKER_FILE = "_LATEST.json"  # at a URI prefix: names the live generation; pyarrow and Ray skip "_" files
GENERATION = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")  # a generation folder's name


def write_info(folder: str, info: dict) -> None:
    """The dataset_info.json that training reads (classes, counts, statistics, source)."""
    storage.write_json(storage.join(folder, INFO_FILE), info)


def check_output(out: str | os.PathLike, *, overwrite: bool) -> None:
    """Refuse an output path that is a file, or that holds data unless overwriting; on an object
    store also a missing bucket, denied access or an unreachable endpoint, before any work."""
    if not storage.is_uri(out):
        _check_output_dir(Path(out), overwrite=overwrite)
        return
    uri = storage.as_uri(out).rstrip("/")
    storage.check_bucket(uri)
    if storage.is_file(uri):
        raise DataError(f"{uri}: output path is an object, not a prefix (key 'out'); choose a prefix for --out")
    if storage.names(uri) and not overwrite:
        raise DataError(
            f"{uri}: output prefix already holds data (key 'out'); pass --overwrite "
            "(overwrite=True) to replace it, or choose another --out"
        )


def _check_output_dir(out: Path, *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path is a file (key 'out'); choose a folder for --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(
            f"{out}: output folder already holds data (key 'out'); pass --overwrite "
            "(overwrite=True) to replace it, or choose another --out"
        )


@contextlib.contextmanager
def publishing(out: str | os.PathLike) -> Iterator[str]:
    """The folder to write a data set into, published as `out` when the block completes and
    removed when it fails: a local staging folder, or a new generation under a URI prefix."""
    if storage.is_uri(out):
        with _new_generation(storage.as_uri(out).rstrip("/")) as folder:
            yield folder
        return
    with _staging_dir(Path(out)) as staging:
        yield str(staging)
        _commit_dir(staging, Path(out))


@contextlib.contextmanager
def _staging_dir(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out`, removed if the work inside fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit_dir(staging: Path, out: Path) -> None:
    """Swap the complete staging folder in as `out`; an old `out` is removed only afterwards."""
    if not out.exists():
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _new_generation(prefix: str) -> Iterator[str]:
    """A new generation folder under `prefix`; once complete the marker names it and the other
    generations are deleted. On failure it is deleted and the marker still names the old one."""
    generation = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    folder = storage.join(prefix, generation)
    try:
        yield folder
    except BaseException:
        _delete_quietly(folder)
        raise
    # The flip. Should this one upload fail, the generation stays: the upload may have landed.
    storage.write_json(storage.join(prefix, MARKER_FILE), {"generation": generation})
    for name in storage.names(prefix):
        if GENERATION.fullmatch(name) and name != generation:
            _delete_quietly(storage.join(prefix, name))


def _delete_quietly(folder: str) -> None:
    """Delete a generation no marker names; one left behind (the store failing too) is never
    read and goes with the next successful prepare, so this only warns."""
    try:
        storage.delete_folder(folder)
    except (OSError, RaymcError) as exc:
        logger.warning("could not delete %s (%s); nothing reads it, the next prepare deletes it", folder, exc)


def live_folder(location: str | os.PathLike) -> str:
    """The folder holding the data set published at `location`: a local folder itself (absolute),
    on an object store the generation that the prefix's marker names."""
    uri = storage.as_uri(location).rstrip("/")
    if not storage.is_uri(uri):
        return uri
    marker = storage.join(uri, MARKER_FILE)
    try:
        generation = storage.read_json(marker).get("generation")
    except FileNotFoundError:
        raise _unpublished(uri) from None
    except (ValueError, AttributeError):
        generation = None
    if not isinstance(generation, str) or not GENERATION.fullmatch(generation):
        raise DataError(f"{marker}: damaged marker (no generation); prepare the data again with --overwrite")
    return storage.join(uri, generation)


def _unpublished(uri: str) -> DataError:
    """Why a prefix has no marker: no bucket, nothing there, or a preparation that did not finish."""
    storage.check_bucket(uri)
    if storage.names(uri):
        return DataError(
            f"{uri}: preparation did not finish (no {MARKER_FILE} marker); run it again: "
            f"python -m raymc.prepare ... --out {uri} --overwrite"
        )
    return DataError(
        f"{uri}: no prepared data set (nothing under this prefix); check the path, or prepare one "
        f"with python -m raymc.prepare ... --out {uri}"
    )


def run_shard_tasks(
    task: RemoteFunction, jobs: Sequence[object], *, check: Callable[[Any], None] | None = None
) -> list[Any]:
    """Run `task` once per job in parallel and return the results in job order.

    `check` sees each result as its task finishes and may raise (a shard that met a bad file); a
    raymc error raised in a task is raised here as itself, so the CLIs print its one-line message.
    On any error, a task's or check's, the remaining tasks are cancelled and awaited, so none
    writes into the staging folder or generation after we return and it is removed. The tasks get
    this process's object store endpoint (storage.worker_env) in their runtime_env: a Ray started
    before it was set, or a cluster's workers, would not have it.
    """
    env = storage.worker_env()  # the object store's endpoint, so a task reaches what the driver does
    # SPREAD: on a cluster every node decodes its share, rather than the driver's node filling up first.
    task = task.options(scheduling_strategy="SPREAD", **({"runtime_env": {"env_vars": env}} if env else {}))
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
