"""An epoch's training batches, started ahead of the epoch.

Each pass over a Ray Data dataset is a new execution: its executor starts, tasks are scheduled
and a local shuffle buffer fills before the first batch, about 2 s on 2 CPUs (bench/RESULTS.md).
With --cache, the training loop starts the next epoch's pass while the current epoch validates,
hiding that wait: cached validation reads the object store and needs no Ray Data CPUs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import ray.data


def training_batches(
    data: ray.data.Dataset | ray.data.DataIterator, *, batch_size: int, seed: int, epoch: int
) -> Iterable[dict[str, Any]]:
    """One epoch of training batches (a worker's shard, or a whole dataset for the benchmarks):
    whole batches only, shuffled locally across blocks with a seed of (run seed, epoch)."""
    return data.iter_torch_batches(
        batch_size=batch_size,
        drop_last=True,
        local_shuffle_buffer_size=4 * batch_size,
        local_shuffle_seed=seed * 1000 + epoch,
    )


class StartedEpoch:
    """Batches whose first one is fetched at once in a background thread, which makes Ray Data
    start the epoch's execution (it then runs ahead on its own, up to its backpressure limits).

    Iterate it once. `close()` ends the pass early, for an epoch that will not run (early
    stopping), so Ray Data shuts its execution down instead of keeping it open.
    """

    def __init__(self, batches: Iterable[dict[str, Any]]) -> None:
        self._iterator: Iterator[dict[str, Any]] = iter(batches)
        self._first_batch: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch_first, name="raymc-next-epoch", daemon=True)
        self._thread.start()

    def _fetch_first(self) -> None:
        try:
            self._first_batch = next(self._iterator, None)
        except BaseException as error:  # raised again in the thread that iterates
            self._error = error

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._first_batch is None:  # an empty epoch
            return
        yield self._first_batch
        self._first_batch = None  # the batch's tensors are the consumer's now
        yield from self._iterator

    def close(self) -> None:
        """End the pass without consuming it."""
        self._thread.join()
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
