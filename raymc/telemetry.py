"""Live training metrics through `ray.util.metrics`: the Ray dashboard's Metrics view and Prometheus.

Every worker publishes its own series, tagged with the run name and its rank, so a slow or
data-starved worker stands out on the dashboard while the run is still going.
"""

from __future__ import annotations

from ray.util import metrics

from raymc.loss_window import WindowSummary

TAG_KEYS = ("run", "rank")


class TrainingTelemetry:
    """Gauges for one worker of one run, updated once per window of steps."""

    def __init__(self, *, run: str, rank: int) -> None:
        tags = {"run": run, "rank": str(rank)}
        self._images_per_s = self._gauge(
            "raymc_train_images_per_second", "training images per second on this worker", tags
        )
        self._loss = self._gauge("raymc_train_loss", "mean training loss of the latest steps", tags)
        self._lr = self._gauge("raymc_train_learning_rate", "learning rate of the latest step", tags)
        self._epoch = self._gauge("raymc_train_epoch", "epoch in progress", tags)
        self._data_wait = self._gauge(
            "raymc_train_data_wait_seconds", "mean time the latest steps waited for their batch", tags
        )

    @staticmethod
    def _gauge(name: str, description: str, tags: dict[str, str]) -> metrics.Gauge:
        gauge = metrics.Gauge(name, description=description, tag_keys=TAG_KEYS)
        gauge.set_default_tags(tags)
        return gauge

    def record_window(self, window: WindowSummary, *, lr: float) -> None:
        """The steps since the last record (every --log-every-steps steps: raymc.loss_window)."""
        self._loss.set(window.loss)
        self._lr.set(lr)
        self._data_wait.set(window.data_wait_s)
        self._images_per_s.set(window.images_per_s)

    def record_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)
