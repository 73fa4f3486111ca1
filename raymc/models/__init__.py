"""Model registry: `build_model(name, **kwargs)` turns a config's model name and settings into a model.

Every model has `num_streams` (1 or 2), which tells the training loop and pathway analysis how
many input tensors `forward` takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from raymc.errors import ConfigError
from raymc.models.mcresnet import MCResNet, mc_resnet18, mc_resnet34, mc_resnet50, mc_resnet101, mc_resnet152
from raymc.models.sdresnet import SDResNet, sd_resnet50, sd_resnet101, sd_resnet152, survival_probabilities

__all__ = [
    "MODEL_NAMES",
    "MCResNet",
    "SDResNet",
    "build_model",
    "mc_resnet18",
    "mc_resnet34",
    "mc_resnet50",
    "mc_resnet101",
    "mc_resnet152",
    "sd_resnet50",
    "sd_resnet101",
    "sd_resnet152",
    "survival_probabilities",
]


def _keyword_names(fn: Callable[..., Any], *, required: bool = False) -> frozenset[str]:
    """Keyword-only parameter names of `fn`; with required=True only those without a default."""
    params = inspect.signature(fn).parameters.values()
    return frozenset(
        p.name for p in params if p.kind is p.KEYWORD_ONLY and (not required or p.default is p.empty)
    )


# name -> (factory, the model class it builds, the class keywords the factory fixes itself)
_MODELS: dict[str, tuple[Callable[..., nn.Module], type[nn.Module], frozenset[str]]] = {
    "mc_resnet18": (mc_resnet18, MCResNet, frozenset({"block", "layers"})),
    "mc_resnet34": (mc_resnet34, MCResNet, frozenset({"block", "layers"})),
    "mc_resnet50": (mc_resnet50, MCResNet, frozenset({"block", "layers"})),
    "mc_resnet101": (mc_resnet101, MCResNet, frozenset({"block", "layers"})),
    "mc_resnet152": (mc_resnet152, MCResNet, frozenset({"block", "layers"})),
    "sd_resnet50": (sd_resnet50, SDResNet, frozenset({"layers"})),
    "sd_resnet101": (sd_resnet101, SDResNet, frozenset({"layers"})),
    "sd_resnet152": (sd_resnet152, SDResNet, frozenset({"layers"})),
}

MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names and arguments raise ConfigError naming them."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    factory, model_class, fixed = _MODELS[name]
    accepted = _keyword_names(model_class) - fixed
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"model {name!r} does not take {', '.join(unknown)}; it takes: {', '.join(sorted(accepted))}"
        )
    missing = sorted(_keyword_names(model_class, required=True) - fixed - set(kwargs))
    if missing:
        raise ConfigError(f"model {name!r} needs {', '.join(missing)}")
    return factory(**kwargs)
