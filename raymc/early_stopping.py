"""Best-epoch tracking and early stopping, identical on every rank because it sees reduced metrics."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    """Tracks the best value of a monitored metric; `should_stop` after `patience` bad epochs.

    An epoch improves when it beats the best by more than `min_delta` (lower is better for
    losses). Training stops right after exactly `patience` epochs without improvement.
    """

    monitor: str
    patience: int | None = None
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    @property
    def mode(self) -> str:
        return "min" if "loss" in self.monitor else "max"

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        """Record one epoch's metrics; True when this epoch is the new best."""
        value = metrics[self.monitor]
        if math.isnan(value):
            improved = False
        elif self.best is None:
            improved = True
        elif self.mode == "max":
            improved = value > self.best + self.min_delta
        else:
            improved = value < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)
