"""StartedEpoch: an epoch's batches whose pass starts before anyone iterates them."""

from __future__ import annotations

import threading

import pytest

from raymc.batches import StartedEpoch


class Source:
    """An iterable like Ray Data's: one pass per iter(), recording what happened to it."""

    def __init__(self, batches: list, *, fail_at: int | None = None) -> None:
        self.batches, self.fail_at = batches, fail_at
        self.started = threading.Event()
        self.closed = False

    def __iter__(self):
        self.started.set()
        try:
            for i, batch in enumerate(self.batches):
                if i == self.fail_at:
                    raise RuntimeError(f"task failed at batch {i}")
                yield batch
        finally:
            self.closed = True


def test_the_pass_starts_before_iteration_and_yields_every_batch_once_in_order():
    source = Source([{"x": i} for i in range(5)])
    epoch = StartedEpoch(source)
    assert source.started.wait(5), "the first batch was not fetched in the background"
    assert list(epoch) == [{"x": i} for i in range(5)]


def test_an_empty_pass_yields_nothing():
    assert list(StartedEpoch(Source([]))) == []


@pytest.mark.parametrize("fail_at", [0, 2])
def test_a_failure_reaches_the_thread_that_iterates(fail_at):
    epoch = StartedEpoch(Source([1, 2, 3], fail_at=fail_at))
    seen = []
    with pytest.raises(RuntimeError, match=f"task failed at batch {fail_at}"):
        for batch in epoch:
            seen.append(batch)
    assert seen == [1, 2, 3][:fail_at]


def test_close_ends_a_pass_nobody_consumed():
    source = Source([1, 2, 3])
    StartedEpoch(source).close()
    assert source.closed
