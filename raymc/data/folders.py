"""Output folders written atomically: refuse to clobber, write beside, swap in when complete.

Every `prepare_*` writes its whole output into a staging sibling and swaps it in only once
complete, so a failed or interrupted run never leaves a half-written data set behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from raymc.errors import DataError

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
