"""Optimizer with per-part learning rates (trunks, head), and the per-iteration warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from raymc.config import TrainConfig

# Warmup starts at this fraction of the base rate (LinearLR needs a positive start factor).
WARMUP_START_FACTOR = 1e-3
# A --pretrained run's trunks train at this fraction of the base rate unless their own flag sets it:
# they already hold features, and the new head is what has to move far.
PRETRAINED_TRUNK_LR_SCALE = 0.1
# Parameter groups (MCResNet's and SDResNet's `parameter_groups`) that --pretrained starts fresh
# on other classes: they train at --head-lr, else at the base rate.
HEAD_GROUPS = ("shared", "head")


def _group_lr(name: str, config: TrainConfig) -> float:
    """A group's rate: its own flag when given, else the base rate (the trunks' scaled for --pretrained)."""
    own = {"stream1": config.stream1_lr, "stream2": config.stream2_lr, **dict.fromkeys(HEAD_GROUPS, config.head_lr)}
    if own.get(name) is not None:
        return own[name]
    if name in HEAD_GROUPS or not config.pretrained:
        return config.base_lr
    return PRETRAINED_TRUNK_LR_SCALE * config.base_lr


def _named_groups(model: nn.Module, config: TrainConfig) -> list[tuple[str, list[nn.Parameter], float]]:
    """(name, parameters, lr) per part of the model (trunks, head), one group for a model without parts."""
    parts = model.parameter_groups() if hasattr(model, "parameter_groups") else {"all": list(model.parameters())}
    return [(name, params, _group_lr(name, config)) for name, params in parts.items()]


def _is_norm_or_bias(module: nn.Module, param_name: str) -> bool:
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    return isinstance(module, norm_types) or param_name == "bias"


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over parameter groups named in `group_name`."""
    no_decay: set[int] = set()
    if not config.norm_bias_weight_decay:
        no_decay = {
            id(p)
            for module in model.modules()
            for name, p in module.named_parameters(recurse=False)
            if _is_norm_or_bias(module, name)
        }
    groups = []
    for name, params, lr in _named_groups(model, config):
        decayed = [p for p in params if id(p) not in no_decay]
        exempt = [p for p in params if id(p) in no_decay]
        groups.append({"params": decayed, "lr": lr, "weight_decay": config.weight_decay, "group_name": name})
        if exempt:
            groups.append({"params": exempt, "lr": lr, "weight_decay": 0.0, "group_name": f"{name}_no_decay"})
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.base_lr)
    return torch.optim.SGD(groups, lr=config.base_lr, momentum=config.momentum, nesterov=config.nesterov)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> LRScheduler:
    """Linear warmup from ~0 to each group's rate, then cosine decay to --min-lr, stepped per iteration."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, math.ceil(config.warmup_epochs * steps_per_epoch))
    cosine = CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=config.min_lr)
    if warmup <= 0:
        return cosine
    linear = LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, schedulers=[linear, cosine], milestones=[warmup])
