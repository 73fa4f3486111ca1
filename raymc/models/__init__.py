"""Model registry: each model's family metadata, and `build_model(name, **kwargs)`.

A family (mc_resnet, sd_resnet) says what the rest of raymc needs to know about its models without
building one: the input streams `forward` takes, in order, and which TrainConfig settings apply to
it. The config checks, the data checks and the loop ask the registry, never a model's name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from raymc.errors import ConfigError
from raymc.models.mcresnet import MCResNet, mc_resnet18, mc_resnet34, mc_resnet50, mc_resnet101, mc_resnet152
from raymc.models.sdresnet import SDResNet, sd_resnet50, sd_resnet101, sd_resnet152, survival_probabilities

if TYPE_CHECKING:  # raymc.config imports this module
    from raymc.config import TrainConfig

__all__ = [
    "MODEL_NAMES",
    "MCResNet",
    "ModelFamily",
    "SDResNet",
    "build_model",
    "mc_resnet18",
    "mc_resnet34",
    "mc_resnet50",
    "mc_resnet101",
    "mc_resnet152",
    "family_for_streams",
    "model_family",
    "model_kwargs",
    "sd_resnet50",
    "sd_resnet101",
    "sd_resnet152",
    "survival_probabilities",
]

PER_STREAM_LRS = ("stream1_lr", "stream2_lr")


@dataclass(frozen=True)
class ModelFamily:
    """What a kind of model takes: its input streams and the TrainConfig settings that are its own."""

    name: str
    model_class: type[nn.Module]
    streams: tuple[str, ...]  # the data columns `forward` takes, in its argument order
    settings: tuple[str, ...]  # TrainConfig fields build_model always gets
    optional_settings: tuple[str, ...] = ()  # TrainConfig fields build_model gets when set (None: the model's default)

    @property
    def num_streams(self) -> int:
        return len(self.streams)

    def takes(self, setting: str) -> bool:
        """Whether a model-specific TrainConfig setting applies to this family: its build settings,
        and the per-stream learning rates of two-stream models (one parameter group per trunk)."""
        own_lrs = PER_STREAM_LRS if self.num_streams == 2 else ()
        return setting in (*self.settings, *self.optional_settings, *own_lrs)


MC_RESNET = ModelFamily("mc_resnet", MCResNet, streams=("rgb", "depth"), settings=("fusion", "dropout"))
SD_RESNET = ModelFamily("sd_resnet", SDResNet, streams=("rgb",), settings=("sd_mode",), optional_settings=("pL",))
FAMILIES = (MC_RESNET, SD_RESNET)


def family_for_streams(num_streams: int) -> ModelFamily:
    """The family whose models take this many input streams, for "use an X model" advice."""
    return next(family for family in FAMILIES if family.num_streams == num_streams)


def _keyword_names(fn: Callable[..., Any], *, required: bool = False) -> frozenset[str]:
    """Keyword-only parameter names of `fn`; with required=True only those without a default."""
    params = inspect.signature(fn).parameters.values()
    return frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY and (not required or p.default is p.empty))


# name -> (factory, the family of the model class it builds, the class keywords the factory fixes itself)
_MODELS: dict[str, tuple[Callable[..., nn.Module], ModelFamily, frozenset[str]]] = {
    "mc_resnet18": (mc_resnet18, MC_RESNET, frozenset({"block", "layers"})),
    "mc_resnet34": (mc_resnet34, MC_RESNET, frozenset({"block", "layers"})),
    "mc_resnet50": (mc_resnet50, MC_RESNET, frozenset({"block", "layers"})),
    "mc_resnet101": (mc_resnet101, MC_RESNET, frozenset({"block", "layers"})),
    "mc_resnet152": (mc_resnet152, MC_RESNET, frozenset({"block", "layers"})),
    "sd_resnet50": (sd_resnet50, SD_RESNET, frozenset({"layers"})),
    "sd_resnet101": (sd_resnet101, SD_RESNET, frozenset({"layers"})),
    "sd_resnet152": (sd_resnet152, SD_RESNET, frozenset({"layers"})),
}

MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def _registered(name: str) -> tuple[Callable[..., nn.Module], ModelFamily, frozenset[str]]:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return _MODELS[name]


def model_family(name: str) -> ModelFamily:
    """The family of a registered model; an unknown name raises ConfigError listing the valid ones."""
    return _registered(name)[1]


def model_kwargs(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The build_model arguments a config implies: the classes and the settings of the model's family."""
    family = model_family(config.model)
    optional = {name: getattr(config, name) for name in family.optional_settings}
    return {
        "num_classes": num_classes,
        **{name: getattr(config, name) for name in family.settings},
        **{name: value for name, value in optional.items() if value is not None},
    }


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names and arguments raise ConfigError naming them."""
    factory, family, fixed = _registered(name)
    accepted = _keyword_names(family.model_class) - fixed
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"model {name!r} does not take {', '.join(unknown)}; it takes: {', '.join(sorted(accepted))}")
    missing = sorted(_keyword_names(family.model_class, required=True) - fixed - set(kwargs))
    if missing:
        raise ConfigError(f"model {name!r} needs {', '.join(missing)}")
    return factory(**kwargs)
