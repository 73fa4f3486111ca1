"""Divergence is a non-finite loss, not a step GradScaler skipped (fp16 overflow in the gradients),
and it is found at the end of a window of steps, without a host sync per step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raymc.loss_window import Diverged, LossWindow


def test_a_step_gradscaler_skips_is_not_divergence():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.tensor([[1e35, 1.0]])).sum()  # finite, but 2**16 times it overflows

    window = LossWindow(torch.device("cpu"), first_step=1)
    window.add(loss, images=1, data_wait_s=0.0)
    window.close(epoch=1)  # the loop's check: passes
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()

    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))  # step skipped
    assert scaler.get_scale() == 2.0**15  # and the scale lowered, as GradScaler does


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_loss_in_a_window_is_divergence_naming_epoch_and_steps(value):
    window = LossWindow(torch.device("cpu"), first_step=5)
    for loss in (1.0, value, 2.0):
        window.add(torch.tensor(loss), images=4, data_wait_s=0.0)
    with pytest.raises(Diverged, match="epoch 3, steps 5-7"):
        window.close(epoch=3)


def test_a_finite_window_reports_its_mean_loss_and_wait():
    window = LossWindow(torch.device("cpu"), first_step=1)
    for loss, wait in ((1.0, 0.25), (3.0, 0.75)):
        window.add(torch.tensor(loss), images=8, data_wait_s=wait)
    summary = window.close(epoch=1)
    assert (summary.loss, summary.data_wait_s) == (2.0, 0.5)
    assert summary.images_per_s > 0


def test_a_window_of_one_step_names_that_step():
    window = LossWindow(torch.device("cpu"), first_step=9)
    window.add(torch.tensor(float("nan")), images=1, data_wait_s=0.0)
    with pytest.raises(Diverged, match="epoch 2, step 9$"):
        window.close(epoch=2)
