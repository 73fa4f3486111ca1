"""An epoch's batches as the workers read them: onto their device, pinned and prefetched on GPUs,
and started ahead of the epoch.

Each pass over a Ray Data dataset is a new execution: its executor starts, tasks are scheduled
and a local shuffle buffer fills before the first batch, about 2 s on 2 CPUs (bench/RESULTS.md).
With --cache, the training loop starts the next epoch's pass while the current epoch validates,
hiding that wait: cached validation reads the object store and needs no Ray Data CPUs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import ray.data
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from raymc.config import TrainConfig
from raymc.data.augment import TrainView
from raymc.data.device_decode import decode_train_batch

# Batches Ray Data's background thread readies ahead of the one training on a GPU (Ray's default,
# kept on CPUs, is 1): one being copied to the device while another trains. A documented default
# until a GPU node with Ray measures it (the end-to-end figure of issue 18 is open).
GPU_PREFETCH_BATCHES = 2


def device_batches(
    data: ray.data.Dataset | ray.data.DataIterator,
    *,
    batch_size: int,
    device: torch.device,
    collate_fn: NumpyBatchCollateFn | None = None,
    **options: Any,
) -> Iterable[dict[str, Any]]:
    """`iter_torch_batches` onto `device`. On CUDA the batches are collated into pinned host memory,
    so Ray Data's copy to the device (in its background thread, non-blocking) is really asynchronous:
    from pageable memory a "non-blocking" copy waits for the transfer. `collate_fn` turns rows into
    tensors where Ray's default cannot (--decode-on device's encoded JPEGs)."""
    on_gpu = device.type == "cuda"
    return data.iter_torch_batches(
        batch_size=batch_size,
        device=device,
        collate_fn=collate_fn,
        pin_memory=on_gpu,
        prefetch_batches=GPU_PREFETCH_BATCHES if on_gpu else 1,
        **options,
    )


class DecodeOnDevice(NumpyBatchCollateFn):
    """--decode-on device's collate step: a batch of encoded rows with their drawn parameters ->
    {rgb, label} on the worker's device (raymc.data.device_decode). Ray Data runs it in its
    background threads on the worker, so decoding overlaps the training step."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        super().__init__()
        self.view = TrainView(config.image_size, config.crop_scale)
        self.device, self.on_bad_image = device, config.on_bad_image

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return decode_train_batch(batch, view=self.view, device=self.device, on_bad_image=self.on_bad_image)


def train_collate(config: TrainConfig, device: torch.device) -> DecodeOnDevice | None:
    """The collate step training batches need: DecodeOnDevice with --decode-on device, else Ray's."""
    return DecodeOnDevice(config, device) if config.decode_on == "device" else None


def training_batches(
    data: ray.data.Dataset | ray.data.DataIterator,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    device: torch.device,
    collate_fn: NumpyBatchCollateFn | None = None,
) -> Iterable[dict[str, Any]]:
    """One epoch of training batches (a worker's shard, or a whole dataset for the benchmarks):
    whole batches only, shuffled locally across blocks with a seed of (run seed, epoch)."""
    return device_batches(
        data,
        batch_size=batch_size,
        device=device,
        collate_fn=collate_fn,
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
