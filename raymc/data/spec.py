"""What a model's inputs are and how they are normalized on the device: imports neither Ray nor
Ray Data, so the training step (raymc.step) and the GPU benchmark run without Ray.

Ray Data ships uint8 RGB and float32 metric depth to the workers; normalization happens on the
worker's device, where it is nearly free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class StreamSpec:
    """How one model input is normalized: (x / scale - mean) / std, per channel."""

    column: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0
    missing_is_zero: bool = False  # depth: 0 means "no reading" and stays 0 after normalization


RGB_STREAM = StreamSpec("rgb", IMAGENET_MEAN, IMAGENET_STD, scale=255.0)  # uint8 RGB with ImageNet statistics


@dataclass(frozen=True)
class DataSpec:
    """What the training loop needs to know about a prepared data set."""

    classes: tuple[str, ...]
    streams: tuple[StreamSpec, ...]
    num_train: int
    num_val: int
    val_split: str = "test"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def to_model_inputs(
    batch: dict[str, torch.Tensor], spec: DataSpec, device: torch.device, *, channels_last: bool = False
) -> list[torch.Tensor]:
    """Move a batch's streams to the device and normalize them there, in the model's input order.

    The copy only overlaps with the device's work when the batch is in pinned host memory
    (raymc.batches pins it on GPU workers); Ray Data has usually moved it to the device already.
    """
    inputs = []
    for stream in spec.streams:
        raw = batch[stream.column].to(device, non_blocking=True).float()
        # Built on the host and copied without blocking: torch.tensor(..., device="cuda") would wait
        # for the device's whole queue (a blocking host-to-device copy synchronizes its stream).
        mean = _per_channel(stream.mean, stream.scale).to(device, non_blocking=True)
        std = _per_channel(stream.std, stream.scale).to(device, non_blocking=True)
        x = (raw - mean) / std
        if stream.missing_is_zero:
            x = torch.where(raw > 0, x, torch.zeros_like(x))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        inputs.append(x)
    return inputs


def _per_channel(values: tuple[float, ...], scale: float) -> torch.Tensor:
    return (torch.tensor(values) * scale).view(1, -1, 1, 1)
