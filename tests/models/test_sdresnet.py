"""Stochastic-depth ResNets: survival rule, row/batch modes, eval identity, torchvision weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import StochasticDepth

from raymc.errors import ConfigError
from raymc.models import sd_resnet50, sd_resnet101, sd_resnet152, survival_probabilities
from raymc.models.sdresnet import StochasticDepthBottleneck

DEPTHS = {
    50: (sd_resnet50, torchvision.models.resnet50, 16, 25_557_032),
    101: (sd_resnet101, torchvision.models.resnet101, 33, 44_549_160),
    152: (sd_resnet152, torchvision.models.resnet152, 50, 60_192_808),
}


@pytest.fixture(scope="module", params=sorted(DEPTHS))
def pair(request):
    """(depth, SD model with pL=0.5, torchvision's model), each built once per module."""
    factory, reference, _, _ = DEPTHS[request.param]
    return request.param, factory(pL=0.5), reference()


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_survival_rule_decays_linearly_to_the_last_block():
    assert survival_probabilities(4, 0.5) == [0.875, 0.75, 0.625, 0.5]
    assert survival_probabilities(3, 1.0) == [1.0, 1.0, 1.0]


def test_parameter_counts_match_torchvision(pair):
    depth, model, reference = pair
    assert _num_params(model) == _num_params(reference) == DEPTHS[depth][3]


def test_every_block_gets_its_survival_probability(pair):
    depth, model, _ = pair
    expected = survival_probabilities(DEPTHS[depth][2], 0.5)
    assert model.survival_probabilities() == pytest.approx(expected)
    modes = {m.stochastic_depth.mode for m in model.modules() if isinstance(m, StochasticDepthBottleneck)}
    assert modes == {"row"}


def test_state_dict_keys_are_torchvisions(pair):
    _, model, reference = pair
    assert list(model.state_dict()) == list(reference.state_dict())


def test_weights_load_strictly_both_ways(pair):
    depth, model, reference = pair
    model.load_state_dict(reference.state_dict(), strict=True)
    factory = DEPTHS[depth][0]
    factory(pL=1.0).load_state_dict(reference.state_dict(), strict=True)
    reference.load_state_dict(model.state_dict(), strict=True)


def test_output_shape_and_single_stream():
    model = sd_resnet50(num_classes=10, sd_mode="batch")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.num_streams == 1


def test_eval_is_the_plain_network_with_the_same_weights():
    torch.manual_seed(0)
    sd = sd_resnet50(num_classes=10, pL=0.2).eval()
    plain = torchvision.models.resnet50(num_classes=10).eval()
    plain.load_state_dict(sd.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first, second = sd(x), sd(x)
        assert torch.equal(first, second)
        torch.testing.assert_close(first, plain(x))


def test_training_is_stochastic():
    torch.manual_seed(0)
    model = sd_resnet50(num_classes=10, pL=0.2).train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


def _branch_factors(mode: str, *, n: int = 64) -> torch.Tensor:
    """Per-sample factor StochasticDepth applied to one block's residual branch (p = 0.5)."""
    block = StochasticDepthBottleneck(256, 64).train()
    block.stochastic_depth = StochasticDepth(0.5, mode)
    seen = {}
    block.stochastic_depth.register_forward_hook(lambda _m, args, out: seen.update(branch=args[0], out=out))
    with torch.no_grad():
        block(torch.randn(n, 256, 4, 4))
    branch, out = seen["branch"].flatten(1), seen["out"].flatten(1)
    return (out.abs().amax(dim=1) / branch.abs().amax(dim=1)).round()


def test_row_mode_drops_residual_branches_per_sample():
    torch.manual_seed(0)
    factors = _branch_factors("row")
    assert set(factors.tolist()) == {0.0, 2.0}


def test_batch_mode_drops_the_whole_batch_at_once():
    torch.manual_seed(0)
    draws = [set(_branch_factors("batch").tolist()) for _ in range(20)]
    assert all(len(d) == 1 for d in draws)
    assert set.union(*draws) == {0.0, 2.0}


def test_dropped_branch_leaves_the_identity_path():
    block = StochasticDepthBottleneck(256, 64).train()
    block.stochastic_depth = StochasticDepth(1.0, "row")
    x = torch.randn(2, 256, 4, 4)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(x))


def test_sd_off_block_matches_torchvision_bottleneck():
    torch.manual_seed(0)
    block = StochasticDepthBottleneck(256, 64).train()
    reference = torchvision.models.resnet.Bottleneck(256, 64).train()
    reference.load_state_dict(block.state_dict())
    x = torch.randn(2, 256, 4, 4)
    torch.testing.assert_close(block(x), reference(x))


@pytest.mark.parametrize(
    ("kwargs", "named"), [({"pL": 0.0}, "pL"), ({"pL": 1.5}, "pL"), ({"sd_mode": "col"}, "sd_mode")]
)
def test_bad_settings_raise_config_error_naming_the_argument(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        sd_resnet50(**kwargs)
