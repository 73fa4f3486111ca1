"""Autocast precision for one device, shared by the training loop and batch inference.

A module of its own so that inference actors choose the precision training validated with
without importing the training loop (and Ray Train with it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the step (raymc.step) runs where neither YAML nor pandas (raymc.config's) is installed
    from raymc.config import TrainConfig

__all__ = ["NATIVE_BF16_CAPABILITY", "Precision", "autocast_dtype"]

logger = logging.getLogger(__name__)

# bf16 tensor cores arrive with Ampere (A100, compute capability 8.0). Older GPUs (V100 7.0, T4 7.5)
# emulate bf16, slower than fp16, yet torch.cuda.is_bf16_supported() counts the emulation.
NATIVE_BF16_CAPABILITY = (8, 0)


def autocast_dtype(amp_dtype: str, capability: tuple[int, int] | None) -> torch.dtype | None:
    """The autocast dtype for --amp-dtype on a GPU of compute `capability` (None: no GPU, fp32).

    A pure function of the capability, so the choice is testable without a GPU: auto takes bf16
    only where it is native, else fp16 (with GradScaler); an explicit bf16 is honoured everywhere.
    """
    if capability is None:
        return None
    native_bf16 = tuple(capability) >= NATIVE_BF16_CAPABILITY
    if amp_dtype == "fp16" or (amp_dtype == "auto" and not native_bf16):
        return torch.float16
    if not native_bf16:
        logger.warning(
            "--amp-dtype bf16 on a GPU of compute capability %d.%d, which emulates bf16 (native from 8.0): "
            "expect slower steps than with --amp-dtype fp16",
            *capability,
        )
    return torch.bfloat16


@dataclass(frozen=True)
class Precision:
    """Autocast settings for one device: bf16 on GPUs that have it natively, else fp16, fp32 on CPUs."""

    dtype: torch.dtype | None

    @classmethod
    def choose(cls, device: torch.device, config: TrainConfig) -> Precision:
        if not config.mixed_precision or device.type != "cuda":
            return cls(None)
        return cls(autocast_dtype(config.amp_dtype, torch.cuda.get_device_capability(device)))

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16
