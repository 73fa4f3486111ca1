"""Prepared Parquet shards: written with page checksums, and a damaged one named in raymc's words.

Without page checksums pyarrow reads a damaged data page's bytes silently (uncompressed NYU pixels
come back wrong, with no error), so shards are written with a CRC per page and every read verifies
them. pyarrow's error names neither the file nor what to do, and Ray's reader adds nothing, so
before any Ray Data task runs every footer is read on the driver (`check_shards`), and after a read
has failed inside Ray the driver verifies the pages of every shard to name the damaged one
(`damaged_shard`): a cost paid only on that failure.
"""

from __future__ import annotations

import concurrent.futures
import functools
import posixpath
import re
from collections.abc import Callable

import pyarrow
import pyarrow.dataset as pds
import pyarrow.fs
import pyarrow.parquet as pq

from raymc import storage
from raymc.errors import DataError

READERS = 16  # threads reading shards on the driver: on an object store each read is mostly latency
# Ray Data's own scan defaults (ParquetDatasource: buffered stream, 8 MiB), which passing scan
# options would otherwise replace, plus checking each page against its checksum.
SCAN_OPTIONS = pds.ParquetFragmentScanOptions(
    use_buffered_stream=True, buffer_size=8 * 2**20, page_checksum_verification=True
)
# A failure raised by pyarrow's Parquet reader inside a Ray Data task (its traceback names the reader).
PARQUET_READ_FAILURE = re.compile(r"parquet|checksum verification", re.IGNORECASE)


def write_shard(location: str, table: pyarrow.Table, **options) -> None:
    """Write one shard of a prepared data set, with a checksum in every data page."""
    storage.write_parquet(location, table, write_page_checksum=True, **options)


def check_shards(kind: str, files: list[str]) -> None:
    """Read every shard's footer on the driver, in parallel, before any Ray Data task runs: a
    damaged shard is then named here instead of failing a read task deep in training with pyarrow's
    ArrowInvalid. Costs one small read per shard (the footer) each time a dataset is built."""
    error = _first_failing(kind, files, _footer_error, "not a readable Parquet shard")
    if error is not None:
        raise error


def damaged_shard(kind: str, files: list[str]) -> DataError | None:
    """The error naming the first of `files` whose footer or pages are damaged, or None when
    every page matches its checksum: read in full, so only called once a read has failed."""
    return _first_failing(kind, files, _page_error, "damaged Parquet shard")


def _first_failing(kind: str, files: list[str], error_of: Callable[..., str | None], what: str) -> DataError | None:
    """The error naming the first of `files` that `error_of` finds fault with (all read in
    parallel), or None when it finds none."""
    if not files:
        return None
    filesystem, folder = storage.filesystem(posixpath.dirname(files[0]))  # the shards share one folder
    paths = [f"{folder}/{posixpath.basename(file)}" for file in files]
    with concurrent.futures.ThreadPoolExecutor(max_workers=READERS) as pool:
        failures = pool.map(functools.partial(error_of, filesystem=filesystem), paths)
    for file, failure in zip(files, failures, strict=True):
        if failure is not None:
            again = f"python -m raymc.prepare {kind} ... --overwrite"
            return DataError(f"{file}: {what} ({failure}); prepare the data again with {again}")
    return None


def _footer_error(path: str, *, filesystem: pyarrow.fs.FileSystem) -> str | None:
    """Why the Parquet footer of `path` cannot be read, or None when it can."""
    try:
        pq.read_metadata(path, filesystem=filesystem)
    except (pyarrow.ArrowException, OSError) as exc:
        return str(exc)
    return None


def _page_error(path: str, *, filesystem: pyarrow.fs.FileSystem) -> str | None:
    """Why `path` cannot be read in full with its page checksums verified, or None when it can."""
    try:
        with pq.ParquetFile(path, filesystem=filesystem, page_checksum_verification=True) as shard:
            for _ in shard.iter_batches():
                pass
    except (pyarrow.ArrowException, OSError) as exc:
        return str(exc)
    return None
