"""ResNet-50/101/152 with stochastic depth (Huang et al. 2016) on every residual branch.

The network is torchvision's `ResNet` built from a `Bottleneck` whose residual branch passes
through `torchvision.ops.StochasticDepth` before the addition. StochasticDepth has no parameters
or buffers, so the `state_dict` is key-for-key torchvision's: weights move freely between the two.
torchvision scales kept branches by 1/p_l while training, so evaluation is the plain network
(the paper instead scales by p_l at test time; the expected outputs are the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import StochasticDepth

from raymc.errors import ConfigError

__all__ = [
    "SD_MODES",
    "SDResNet",
    "StochasticDepthBottleneck",
    "sd_resnet50",
    "sd_resnet101",
    "sd_resnet152",
    "survival_probabilities",
]

SD_MODES = ("row", "batch")


def survival_probabilities(num_blocks: int, pL: float) -> list[float]:
    """The paper's linear decay rule: p_l = 1 - (l / L) * (1 - pL) for blocks l = 1..L."""
    return [1.0 - (block / num_blocks) * (1.0 - pL) for block in range(1, num_blocks + 1)]


class StochasticDepthBottleneck(Bottleneck):
    """torchvision's Bottleneck with `stochastic_depth` applied to the residual branch.

    The drop probability starts at 0 (plain Bottleneck); `SDResNet` sets it per block.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stochastic_depth = StochasticDepth(0.0, "row")

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.stochastic_depth(out) + identity)


class SDResNet(ResNet):
    """A torchvision ResNet whose blocks survive with linearly decaying probability while training."""

    num_streams = 1
    trunk_prefixes = ("",)  # state_dict key prefix of each stream's trunk (the network minus its head)
    head_modules = ("fc",)  # what starts fresh when fine-tuning on other classes

    def __init__(
        self,
        *,
        layers: Sequence[int],
        num_classes: int = 1000,
        pL: float = 0.5,
        sd_mode: str = "row",
        zero_init_residual: bool = False,
    ) -> None:
        if not 0.0 < pL <= 1.0:
            raise ConfigError(f"pL={pL} must be in (0, 1]; 1.0 turns stochastic depth off")
        if sd_mode not in SD_MODES:
            raise ConfigError(f"sd_mode={sd_mode!r} is not one of {list(SD_MODES)}")
        super().__init__(
            block=StochasticDepthBottleneck,
            layers=list(layers),
            num_classes=num_classes,
            zero_init_residual=zero_init_residual,
        )
        blocks = [m for m in self.modules() if isinstance(m, StochasticDepthBottleneck)]
        for block, survival in zip(blocks, survival_probabilities(len(blocks), pL), strict=True):
            block.stochastic_depth = StochasticDepth(1.0 - survival, sd_mode)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters split into "trunk" and "head" (fc), so a fine-tuned head can train at its own rate."""
        head = [p for name in self.head_modules for p in getattr(self, name).parameters()]
        in_head = {id(p) for p in head}
        return {"trunk": [p for p in self.parameters() if id(p) not in in_head], "head": head}

    def survival_probabilities(self) -> list[float]:
        """Each block's survival probability while training, in forward order."""
        return [1.0 - m.stochastic_depth.p for m in self.modules() if isinstance(m, StochasticDepthBottleneck)]


def sd_resnet50(**kwargs: Any) -> SDResNet:
    """ResNet-50 with stochastic depth; pL=1.0 is torchvision's plain resnet50."""
    return SDResNet(layers=(3, 4, 6, 3), **kwargs)


def sd_resnet101(**kwargs: Any) -> SDResNet:
    """ResNet-101 with stochastic depth; pL=1.0 is torchvision's plain resnet101."""
    return SDResNet(layers=(3, 4, 23, 3), **kwargs)


def sd_resnet152(**kwargs: Any) -> SDResNet:
    """ResNet-152 with stochastic depth; pL=1.0 is torchvision's plain resnet152."""
    return SDResNet(layers=(3, 8, 36, 3), **kwargs)
