"""MCResNet: shapes, parameter counts, fusion behaviour, parameter groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raymc.errors import ConfigError
from raymc.models import mc_resnet18, mc_resnet34, mc_resnet50, mc_resnet101, mc_resnet152
from raymc.models.mcresnet import GatedFusion, WeightedFusion

FUSIONS = ("concat", "weighted", "gated")


def _inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 3, 32, 32), torch.randn(n, 1, 32, 32)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("factory", "dim"),
    [(mc_resnet18, 512), (mc_resnet34, 512), (mc_resnet50, 2048), (mc_resnet101, 2048), (mc_resnet152, 2048)],
)
def test_every_depth_gives_logits_and_pooled_features(factory, dim):
    model = factory(num_classes=7).eval()
    x1, x2 = _inputs()
    with torch.no_grad():
        f1, f2 = model.features(x1, x2)
        logits = model(x1, x2)
    assert f1.shape == f2.shape == (2, dim)
    assert logits.shape == (2, 7)
    assert model.num_streams == 2


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_gives_logits_and_trains(fusion):
    model = mc_resnet18(num_classes=5, fusion=fusion, dropout=0.3)
    logits = model(*_inputs())
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_parameter_counts_match_the_reference():
    assert _num_params(mc_resnet18(num_classes=10)) == 22_357_002
    assert _num_params(mc_resnet50(num_classes=10)) == 47_050_762


def test_trunks_take_their_own_channel_counts_and_are_independent():
    model = mc_resnet18(num_classes=3, stream1_channels=3, stream2_channels=2)
    assert model.stream1.conv1.in_channels == 3
    assert model.stream2.conv1.in_channels == 2
    assert isinstance(model.stream1.fc, nn.Identity)
    assert model.stream1.bn1 is not model.stream2.bn1
    assert model.forward(torch.randn(2, 3, 32, 32), torch.randn(2, 2, 32, 32)).shape == (2, 3)


def test_forward_is_features_then_classify():
    model = mc_resnet18(num_classes=4, fusion="gated").eval()
    x1, x2 = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x1, x2), model.classify(*model.features(x1, x2)))


def test_weighted_fusion_starts_equal_and_weights_sum_to_one():
    fusion = WeightedFusion(dim=4)
    assert torch.equal(fusion.weights(), torch.tensor([0.5, 0.5]))
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([1.0, -2.0]))
    w = fusion.weights()
    assert w.sum().item() == pytest.approx(1.0)
    f1, f2 = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(fusion(f1, f2), w[0] * f1 + w[1] * f2)


def test_gated_fusion_picks_weights_per_sample():
    torch.manual_seed(0)
    fusion = GatedFusion(dim=8)
    f1, f2 = torch.randn(5, 8), torch.randn(5, 8)
    gates = fusion.gates(f1, f2)
    assert gates.shape == (5, 2)
    torch.testing.assert_close(gates.sum(dim=1), torch.ones(5))
    assert not torch.allclose(gates[0], gates[1])
    torch.testing.assert_close(fusion(f1, f2), gates[:, :1] * f1 + gates[:, 1:] * f2)


@pytest.mark.parametrize(("fusion", "head_in"), [("concat", 1024), ("weighted", 512), ("gated", 512)])
def test_one_linear_head_sized_by_fusion(fusion, head_in):
    model = mc_resnet18(num_classes=10, fusion=fusion)
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
    assert heads == [model.head]
    assert model.head.in_features == head_in


@pytest.mark.parametrize("fusion", FUSIONS)
def test_parameter_groups_partition_every_parameter_once(fusion):
    model = mc_resnet18(num_classes=10, fusion=fusion)
    groups = model.parameter_groups()
    assert set(groups) == {"stream1", "stream2", "shared"}
    grouped = [id(p) for params in groups.values() for p in params]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["stream1"]} == {id(p) for p in model.stream1.parameters()}
    assert {id(p) for p in model.head.parameters()} <= {id(p) for p in groups["shared"]}


def test_zero_init_residual_zeroes_last_bn_of_each_block():
    model = mc_resnet18(num_classes=2, zero_init_residual=True)
    assert torch.count_nonzero(model.stream2.layer1[0].bn2.weight) == 0
    assert torch.count_nonzero(mc_resnet18(num_classes=2).stream2.layer1[0].bn2.weight) > 0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"fusion": "sum"}, "fusion"),
        ({"dropout": 1.0}, "dropout"),
        ({"stream_names": ("rgb", "rgb")}, "stream_names"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_argument(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        mc_resnet18(num_classes=10, **kwargs)
