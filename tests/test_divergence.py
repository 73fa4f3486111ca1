"""Divergence is a non-finite loss, not a step GradScaler skipped (fp16 overflow in the gradients)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raymc.loop import Diverged, _check_finite


def test_a_step_gradscaler_skips_is_not_divergence():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.tensor([[1e35, 1.0]])).sum()  # finite, but 2**16 times it overflows

    _check_finite(loss, epoch=1, step=1)  # the loop's check: passes
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()

    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))  # step skipped
    assert scaler.get_scale() == 2.0**15  # and the scale lowered, as GradScaler does


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_loss_is_divergence_naming_epoch_and_step(value):
    with pytest.raises(Diverged, match="epoch 3, step 7"):
        _check_finite(torch.tensor(value), epoch=3, step=7)
