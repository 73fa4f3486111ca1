"""MCResNet: two independent ResNet trunks (RGB and depth), late fusion, one linear head.

Each stream keeps its own weights and BN statistics, so the streams can be trained at their own
learning rates and analysed separately. Fusion happens on the pooled feature vectors, and
`classify` is the single path from features to logits: `forward` uses it, and so does pathway
analysis (`raymc.analysis`), which zeroes one stream's features and classifies the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from raymc.errors import ConfigError

__all__ = [
    "FUSIONS",
    "ConcatFusion",
    "GatedFusion",
    "MCResNet",
    "WeightedFusion",
    "mc_resnet18",
    "mc_resnet34",
    "mc_resnet50",
    "mc_resnet101",
    "mc_resnet152",
]


class ConcatFusion(nn.Module):
    """Concatenate the two feature vectors: the head sees both streams' features side by side."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.out_features = 2 * dim

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        return torch.cat([f1, f2], dim=1)


class WeightedFusion(nn.Module):
    """Weighted sum with one learned weight per stream (softmax over 2 logits, starting equal)."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.out_features = dim
        self.logits = nn.Parameter(torch.zeros(2))

    def weights(self) -> Tensor:
        """The two stream weights; they sum to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        w = self.weights()
        return w[0] * f1 + w[1] * f2


class GatedFusion(nn.Module):
    """Weighted sum whose two weights a small MLP picks per sample from both streams' features."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.out_features = dim
        hidden = dim // 4
        self.gate = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))

    def gates(self, f1: Tensor, f2: Tensor) -> Tensor:
        """Per-sample stream weights, shape (N, 2); each row sums to 1."""
        return torch.softmax(self.gate(torch.cat([f1, f2], dim=1)), dim=1)

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        g = self.gates(f1, f2)
        return g[:, :1] * f1 + g[:, 1:] * f2


FUSIONS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion,
    "weighted": WeightedFusion,
    "gated": GatedFusion,
}


def _trunk(
    *, block: type[BasicBlock | Bottleneck], layers: Sequence[int], in_channels: int, zero_init_residual: bool
) -> ResNet:
    """A torchvision ResNet taking `in_channels` inputs and returning pooled features (no fc)."""
    trunk = ResNet(block=block, layers=list(layers), zero_init_residual=zero_init_residual)
    trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
    trunk.fc = nn.Identity()
    return trunk


class MCResNet(nn.Module):
    """Two-stream ResNet: `forward(x1, x2) -> logits`, with x1 the RGB and x2 the depth batch."""

    num_streams = 2
    trunk_prefixes = ("stream1.", "stream2.")  # state_dict key prefix of each stream's trunk, in stream order
    head_modules = ("fusion", "head")  # what starts fresh when fine-tuning on other classes

    def __init__(
        self,
        *,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int,
        stream1_channels: int = 3,
        stream2_channels: int = 1,
        fusion: str = "concat",
        dropout: float = 0.0,
        stream_names: tuple[str, str] = ("rgb", "depth"),
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion={fusion!r} is not one of {sorted(FUSIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout={dropout} must be in [0, 1)")
        if len(stream_names) != 2 or len(set(stream_names)) != 2 or "full" in stream_names:
            raise ConfigError(f"stream_names={stream_names!r} must be two distinct names other than 'full'")
        self.stream_names = tuple(stream_names)
        self.stream1 = _trunk(
            block=block, layers=layers, in_channels=stream1_channels, zero_init_residual=zero_init_residual
        )
        self.stream2 = _trunk(
            block=block, layers=layers, in_channels=stream2_channels, zero_init_residual=zero_init_residual
        )
        self.fusion = FUSIONS[fusion](dim=512 * block.expansion)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.fusion.out_features, num_classes)

    def features(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Each stream's globally average-pooled features, shape (N, D) each."""
        return self.stream1(x1), self.stream2(x2)

    def classify(self, f1: Tensor, f2: Tensor) -> Tensor:
        """Fusion, dropout and head: the one path from pooled features to logits."""
        return self.head(self.dropout(self.fusion(f1, f2)))

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.classify(*self.features(x1, x2))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters split into "stream1", "stream2" and "shared" (fusion + head), for per-stream LRs."""
        return {
            "stream1": list(self.stream1.parameters()),
            "stream2": list(self.stream2.parameters()),
            "shared": [p for name in self.head_modules for p in getattr(self, name).parameters()],
        }


def mc_resnet18(*, num_classes: int, **kwargs: Any) -> MCResNet:
    """MCResNet with two ResNet-18 trunks."""
    return MCResNet(block=BasicBlock, layers=(2, 2, 2, 2), num_classes=num_classes, **kwargs)


def mc_resnet34(*, num_classes: int, **kwargs: Any) -> MCResNet:
    """MCResNet with two ResNet-34 trunks."""
    return MCResNet(block=BasicBlock, layers=(3, 4, 6, 3), num_classes=num_classes, **kwargs)


def mc_resnet50(*, num_classes: int, **kwargs: Any) -> MCResNet:
    """MCResNet with two ResNet-50 trunks."""
    return MCResNet(block=Bottleneck, layers=(3, 4, 6, 3), num_classes=num_classes, **kwargs)


def mc_resnet101(*, num_classes: int, **kwargs: Any) -> MCResNet:
    """MCResNet with two ResNet-101 trunks."""
    return MCResNet(block=Bottleneck, layers=(3, 4, 23, 3), num_classes=num_classes, **kwargs)


def mc_resnet152(*, num_classes: int, **kwargs: Any) -> MCResNet:
    """MCResNet with two ResNet-152 trunks."""
    return MCResNet(block=Bottleneck, layers=(3, 8, 36, 3), num_classes=num_classes, **kwargs)
