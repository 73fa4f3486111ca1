"""--ema-decay: the average follows the closed form, stays on the device, and resumes."""

from __future__ import annotations

import torch
from torch import nn

from raymc.ema import WeightAverage


def test_the_average_equals_the_closed_form_for_weights_and_batchnorm_statistics():
    decay = 0.9
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage(model, decay)
    steps = []
    for step in range(1, 4):
        with torch.no_grad():
            for tensor in [*model.parameters(), model[1].running_mean, model[1].running_var]:
                tensor.copy_(torch.full_like(tensor, float(step)))
            model[1].num_batches_tracked.fill_(step)
        average.update()
        steps.append(float(step))
    averaged = average.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        # EMA_0 = W_0; EMA_t = decay * EMA_(t-1) + (1 - decay) * W_t
        expected = start[name].clone()
        for value in steps:
            expected = decay * expected + (1 - decay) * value
        assert torch.allclose(averaged[name], expected), name
    assert int(averaged["1.num_batches_tracked"]) == 3  # counters follow the model
    assert not any(p.requires_grad for p in average.model.parameters())


def test_the_average_restores_from_its_state_dict():
    model = nn.Linear(3, 2)
    average = WeightAverage(model, 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update()
    restored = WeightAverage(nn.Linear(3, 2), 0.5)
    restored.load_state_dict(average.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), average.state_dict().values()))
