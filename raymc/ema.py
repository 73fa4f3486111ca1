"""An exponential moving average of a model's weights and BatchNorm statistics (--ema-decay).

torch's `AveragedModel.update_parameters` synchronizes with the host twice per call (it counts
updates in a device tensor and branches on it), once per step; raymc applies the averaging
function `get_ema_multi_avg_fn` itself, which is one foreach lerp on the device.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightAverage:
    """`decay` x average + (1 - decay) x model after every optimizer step, starting from the model.

    Built from the uncompiled model (its own copy, in eval mode); the float tensors (parameters,
    running means and variances) are averaged and the integer ones (BatchNorm's step counters) follow
    the model's.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._source = model
        self._average = get_ema_multi_avg_fn(decay)

    def _tensors(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        tensors = [*model.parameters(), *model.buffers()]
        return [t for t in tensors if t.is_floating_point()], [t for t in tensors if not t.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        (averaged, counters), (current, current_counters) = self._tensors(self.model), self._tensors(self._source)
        self._average(averaged, [t.detach() for t in current], None)
        for mine, theirs in zip(counters, current_counters, strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
