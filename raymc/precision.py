"""Autocast precision for one device, shared by the training loop and batch inference.

A module of its own so that inference actors choose the precision training validated with
without importing the training loop (and Ray Train with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raymc.config import TrainConfig

__all__ = ["Precision"]


@dataclass(frozen=True)
class Precision:
    """Autocast settings for one device: bf16 on GPUs that have it, fp16 on request, else fp32."""

    dtype: torch.dtype | None

    @classmethod
    def choose(cls, device: torch.device, config: TrainConfig) -> Precision:
        if not config.mixed_precision or device.type != "cuda":
            return cls(None)
        if config.amp_dtype == "fp16" or (config.amp_dtype == "auto" and not torch.cuda.is_bf16_supported()):
            return cls(torch.float16)
        return cls(torch.bfloat16)

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16
