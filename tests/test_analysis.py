"""Pathway analysis goes through the model's real fusion and leaves the model as it found it."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raymc.analysis import analyze_pathways, pathway_logits
from raymc.models import mc_resnet18

FUSIONS = ("concat", "weighted", "gated")


@pytest.fixture(scope="module", params=FUSIONS)
def model(request):
    torch.manual_seed(0)
    return mc_resnet18(num_classes=4, fusion=request.param, dropout=0.5)


def _inputs(n: int = 4) -> list[torch.Tensor]:
    return [torch.randn(n, 3, 32, 32), torch.randn(n, 1, 32, 32)]


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every BN running_mean / running_var / num_batches_tracked."""
    return {name: b.clone() for name, b in model.named_buffers()}


def test_pathways_go_through_classify_on_pooled_features(model):
    model.eval()
    x1, x2 = _inputs()
    with torch.no_grad():
        out = pathway_logits(model, [x1, x2])
        f1, f2 = model.features(x1, x2)
        assert set(out) == {"full", "rgb_only", "depth_only"}
        assert torch.equal(out["full"], model(x1, x2))
        assert torch.equal(out["rgb_only"], model.classify(f1, torch.zeros_like(f2)))
        assert torch.equal(out["depth_only"], model.classify(torch.zeros_like(f1), f2))
        assert not torch.allclose(out["rgb_only"], out["depth_only"])


def test_keys_follow_stream_names():
    model = mc_resnet18(num_classes=3, stream_names=("color", "hha")).eval()
    with torch.no_grad():
        assert set(pathway_logits(model, _inputs(2))) == {"full", "color_only", "hha_only"}


def test_pathway_logits_refuses_a_training_model(model):
    model.train()
    before = _buffers(model)
    with pytest.raises(ValueError, match="eval"):
        pathway_logits(model, _inputs(2))
    assert all(torch.equal(before[k], v) for k, v in _buffers(model).items())


def test_single_stream_model_has_only_the_full_pathway():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.randn(2, 3, 2, 2)
    with torch.no_grad():
        out = pathway_logits(net, [x])
        assert list(out) == ["full"]
        assert torch.equal(out["full"], net(x))


def test_analysis_keeps_bn_statistics_and_restores_modes(model):
    model.train()
    model.stream2.bn1.eval()  # a frozen BN inside a training model keeps its own mode
    before = _buffers(model)
    modes = {name: m.training for name, m in model.named_modules()}
    analyze_pathways(model, [(_inputs(), torch.tensor([0, 1, 2, 3]))] * 2)
    after = _buffers(model)
    assert before.keys() == after.keys() and any("running_var" in k for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_analysis_returns_accuracy_per_pathway(model):
    model.eval()
    inputs = [_inputs(), _inputs()]
    with torch.no_grad():
        logits = [pathway_logits(model, x) for x in inputs]
    # Targets are the full model's predictions, so "full" is always right.
    targets = [out["full"].argmax(1) for out in logits]
    expected = {
        name: torch.cat([out[name].argmax(1) == t for out, t in zip(logits, targets, strict=True)]).float().mean()
        for name in ("full", "rgb_only", "depth_only")
    }
    model.train()
    accuracy = analyze_pathways(model, zip(inputs, targets, strict=True))
    assert accuracy == pytest.approx({name: value.item() for name, value in expected.items()})
    assert accuracy["full"] == 1.0
    assert model.training


def test_unwraps_distributed_data_parallel(tmp_path, model):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model).eval()
        x = _inputs(2)
        with torch.no_grad():
            got, expected = pathway_logits(wrapped, x), pathway_logits(model, x)
    finally:
        dist.destroy_process_group()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
