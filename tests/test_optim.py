"""Warmup + cosine schedule per iteration, per-stream learning rates, weight-decay exemptions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raymc.config import TrainConfig
from raymc.models import build_model
from raymc.optim import WARMUP_START_FACTOR, build_optimizer, build_scheduler


def lrs_over(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    seen = []
    for _ in range(config.epochs * steps_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    seen.append(optimizer.param_groups[0]["lr"])
    return seen


def test_linear_warmup_then_cosine_to_min_lr():
    config = TrainConfig(epochs=10, lr=0.4, warmup_epochs=2, min_lr=1e-6, batch=256)
    lrs = lrs_over(config, steps_per_epoch=5)
    assert lrs[0] == pytest.approx(0.4 * WARMUP_START_FACTOR)
    warm = lrs[:11]
    assert all(b > a for a, b in zip(warm, warm[1:]))  # rises every iteration
    assert lrs[10] == pytest.approx(0.4)  # peak right after 2 epochs of warmup
    decay = lrs[10:]
    assert all(b <= a for a, b in zip(decay, decay[1:]))
    assert lrs[-1] == pytest.approx(1e-6, abs=1e-9)
    # halfway through the cosine part the rate is halfway between peak and floor
    assert lrs[10 + 20] == pytest.approx((0.4 + 1e-6) / 2, rel=1e-6)


def test_no_warmup_starts_at_the_base_rate():
    lrs = lrs_over(TrainConfig(epochs=2, lr=0.1, warmup_epochs=0), steps_per_epoch=4)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(1e-6, abs=1e-9)


def test_per_stream_learning_rates_and_schedule_scale_each_group():
    model = build_model("mc_resnet18", num_classes=3)
    config = TrainConfig(lr=0.1, stream1_lr=0.01, stream2_lr=0.2, warmup_epochs=0, epochs=2)
    optimizer = build_optimizer(model, config)
    by_name = {g["group_name"]: g for g in optimizer.param_groups}
    assert by_name["stream1"]["lr"] == 0.01 and by_name["stream2"]["lr"] == 0.2 and by_name["shared"]["lr"] == 0.1
    grouped = sum(len(g["params"]) for g in optimizer.param_groups)
    assert grouped == len(list(model.parameters()))
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=1)
    optimizer.step()
    scheduler.step()
    ratio = by_name["stream1"]["lr"] / by_name["shared"]["lr"]
    assert ratio == pytest.approx(0.1, rel=1e-3)


def test_norm_and_bias_can_be_exempt_from_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.05, norm_bias_weight_decay=False))
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay_of[id(model[0].weight)] == 0.05 and decay_of[id(model[3].weight)] == 0.05
    assert decay_of[id(model[1].weight)] == 0 and decay_of[id(model[1].bias)] == 0 and decay_of[id(model[3].bias)] == 0
    everything = build_optimizer(model, TrainConfig(weight_decay=0.05))
    assert {g["weight_decay"] for g in everything.param_groups} == {0.05}


def test_adamw_and_nesterov():
    model = nn.Linear(2, 2)
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="adamw")), torch.optim.AdamW)
    sgd = build_optimizer(model, TrainConfig(nesterov=True, momentum=0.8))
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    assert TrainConfig(optimizer="adamw", batch=256).base_lr == pytest.approx(1e-3)
    assert math.isclose(TrainConfig(batch=128).base_lr, 0.05)


def _lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {g["group_name"]: g["lr"] for g in optimizer.param_groups}


def test_pretrained_mc_trunks_train_at_a_tenth_of_the_default_and_flags_override_each_part():
    model = build_model("mc_resnet18", num_classes=3)
    pretrained = TrainConfig(pretrained="imagenet", batch=256)
    assert _lrs(build_optimizer(model, pretrained)) == pytest.approx({"stream1": 0.01, "stream2": 0.01, "shared": 0.1})
    explicit = TrainConfig(pretrained="imagenet", lr=0.2, stream1_lr=0.05, head_lr=0.3)
    assert _lrs(build_optimizer(model, explicit)) == pytest.approx({"stream1": 0.05, "stream2": 0.02, "shared": 0.3})
    scratch = TrainConfig(lr=0.2, head_lr=0.3)
    assert _lrs(build_optimizer(model, scratch)) == pytest.approx({"stream1": 0.2, "stream2": 0.2, "shared": 0.3})


def test_sd_resnet_trains_its_fc_head_apart_from_the_trunk_with_the_no_decay_split():
    model = build_model("sd_resnet50", num_classes=5)
    config = TrainConfig(pretrained="runs/sd", lr=0.4, weight_decay=0.05, norm_bias_weight_decay=False)
    optimizer = build_optimizer(model, config)
    lrs = _lrs(optimizer)
    assert lrs == pytest.approx({"trunk": 0.04, "trunk_no_decay": 0.04, "head": 0.4, "head_no_decay": 0.4})
    by_name = {g["group_name"]: g for g in optimizer.param_groups}
    assert by_name["head"]["params"] == [model.fc.weight] and by_name["head_no_decay"]["params"] == [model.fc.bias]
    assert by_name["head"]["weight_decay"] == 0.05 and by_name["head_no_decay"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert optimizer.param_groups[-1]["group_name"] == "head_no_decay"  # the loop reports the last group's lr
    assert _lrs(build_optimizer(model, TrainConfig(lr=0.4, head_lr=0.1))) == pytest.approx({"trunk": 0.4, "head": 0.1})
