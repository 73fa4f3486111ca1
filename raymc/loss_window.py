"""What the training loop learns about its steps without waiting for the device each step.

Reading a loss (`.item()`) or reducing a flag across ranks makes the host wait for the device to
finish the step, so the GPU idles while the host queues the next one. The loop instead adds each
step's loss and a not-finite flag into a device tensor and looks at it every --log-every-steps
steps and at the epoch's end: one host sync and one collective per window. This module imports
neither Ray nor torch.distributed beyond the optional all-reduce.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


class Diverged(Exception):
    """The training loss stopped being finite; raised on every rank at the same step."""

    def __init__(self, *, epoch: int, first_step: int, last_step: int) -> None:
        where = f"step {last_step}" if first_step == last_step else f"steps {first_step}-{last_step}"
        super().__init__(f"the training loss is not finite at epoch {epoch}, {where}")
        self.epoch, self.first_step, self.last_step = epoch, first_step, last_step


def all_reduce(values: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks (in place) when there are several."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


@dataclass(frozen=True)
class WindowSummary:
    """This rank's steps of one window, for the live gauges."""

    loss: float  # mean training loss
    data_wait_s: float  # mean wait for a batch
    images_per_s: float  # over the window's wall time, which the closing sync makes real


class LossWindow:
    """The steps since the last look: losses on the device, batch sizes and waits on the host."""

    def __init__(self, device: torch.device, *, first_step: int) -> None:
        self._sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, non-finite count
        self.first_step = first_step  # 1-based number of the window's first step
        self.steps, self._images, self._wait_s = 0, 0, 0.0
        self._started = time.perf_counter()

    def add(self, loss: torch.Tensor, *, images: int, data_wait_s: float) -> None:
        """Count one step (no host sync)."""
        loss = loss.detach().double()
        self._sums += torch.stack([loss, (~torch.isfinite(loss)).double()])
        self.steps, self._images, self._wait_s = self.steps + 1, self._images + images, self._wait_s + data_wait_s

    def close(self, *, epoch: int) -> WindowSummary:
        """Look at the window on every rank (one collective, one host sync): raise Diverged, naming
        the window's steps, when any rank had a non-finite loss in it."""
        mine = self._sums[0].clone()
        reduced = all_reduce(self._sums)
        loss, loss_sum, non_finite = torch.stack([mine, reduced[0], reduced[1]]).tolist()
        if non_finite > 0 or loss_sum != loss_sum:  # NaN != NaN
            raise Diverged(epoch=epoch, first_step=self.first_step, last_step=self.first_step + self.steps - 1)
        elapsed = time.perf_counter() - self._started
        steps = max(self.steps, 1)
        return WindowSummary(loss / steps, self._wait_s / steps, self._images / elapsed if elapsed > 0 else 0.0)
