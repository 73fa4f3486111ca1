"""--compile: the compiled model trains like the plain one, and what is saved carries no compiler prefix."""

from __future__ import annotations

import torch

from raymc import loop
from raymc.config import build_config
from raymc.models import build_model


def test_a_compiled_model_gives_the_plain_models_logits_and_saves_plain_weights():
    config = build_config({"model": "mc_resnet18", "compile": True})
    torch.manual_seed(0)
    core = build_model("mc_resnet18", num_classes=3).eval()
    model = loop.compiled(core, config, torch.device("cpu"))  # aot_eager on the CPU
    rgb, depth = torch.randn(2, 3, 32, 32), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(rgb, depth), core(rgb, depth), atol=1e-5)
    assert loop._unwrap(model) is core
    assert not any(name.startswith("_orig_mod.") for name in loop._unwrap(model).state_dict())


def test_without_compile_the_model_is_left_alone():
    core = torch.nn.Linear(2, 2)
    assert loop.compiled(core, build_config({}), torch.device("cpu")) is core
