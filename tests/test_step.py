"""raymc.step: one training step, run as the loop and the GPU benchmark run it, without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch
from torch import nn

from raymc.data.spec import RGB_STREAM, DataSpec
from raymc.ema import WeightAverage
from raymc.precision import Precision
from raymc.step import StepContext, StepSettings, train_step

# Modules the GPU machine the benchmark runs on lacks (it has torch and torchvision): importing any
# of them fails in the probe below, as it would there.
ABSENT_THERE = ("ray", "yaml", "pandas", "pyarrow")

PROBE = textwrap.dedent(
    """
    import json, sys
    for name in {absent!r}:
        sys.modules[name] = None  # `import name` now raises ImportError
    import torch
    from torch import nn
    from raymc.data.spec import RGB_STREAM, StreamSpec, DataSpec
    from raymc.models import build_model
    from raymc.precision import Precision
    from raymc.step import StepContext, StepSettings, train_step

    torch.manual_seed(0)
    spec = DataSpec(("a", "b", "c"), (RGB_STREAM, StreamSpec("depth", (2.0,), (1.0,), missing_is_zero=True)), 4, 0)
    model = build_model("mc_resnet18", num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    context = StepContext(
        model=model, optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False),
        precision=Precision(None), spec=spec, device=torch.device("cpu"),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1),
        settings=StepSettings(mixup=0.2, cutmix=0.0, mix_switch_prob=0.5, grad_accum_steps=1, grad_clip_norm=1.0),
    )
    batch = {{
        "rgb": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8),
        "depth": torch.rand(4, 1, 32, 32) * 5,
        "label": torch.tensor([0, 1, 2, 0]),
    }}
    before = [p.detach().clone() for p in model.parameters()]
    loss, totals = train_step(context, batch, step=0, num_steps=1)
    moved = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    print(json.dumps({{"loss": loss.item(), "totals": totals.tolist(), "moved": moved,
                      "absent": [m for m in {absent!r} if sys.modules.get(m) is not None]}}))
    """
)


def test_one_real_step_runs_where_ray_cannot_be_imported():
    probe = PROBE.format(absent=ABSENT_THERE)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["absent"] == []
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert result["totals"][2] == 4  # samples of the batch
    assert result["moved"] > 0  # the optimizer stepped


def _context(model: nn.Module, *, accum: int, ema: WeightAverage | None = None) -> StepContext:
    return StepContext(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        precision=Precision(None),
        spec=DataSpec(("a", "b"), (RGB_STREAM,), 4, 0),
        device=torch.device("cpu"),
        loss_fn=nn.CrossEntropyLoss(),
        settings=StepSettings(mixup=0.0, cutmix=0.0, mix_switch_prob=0.5, grad_accum_steps=accum, grad_clip_norm=None),
        ema=ema,
    )


class Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.head(rgb.mean((2, 3)))


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    rgb = torch.randint(0, 256, (4, 3, 2, 2), dtype=torch.uint8, generator=generator)
    return {"rgb": rgb, "label": torch.arange(4) % 2}


def test_gradients_accumulate_until_the_accumulation_boundary_or_the_epochs_end():
    torch.manual_seed(0)
    model = Pooled()
    ema = WeightAverage(model, 0.5)
    context = _context(model, accum=3, ema=ema)
    start = model.head.weight.detach().clone()
    train_step(context, _batch(), step=0, num_steps=5)
    assert torch.equal(model.head.weight, start) and model.head.weight.grad is not None  # accumulating
    train_step(context, _batch(), step=1, num_steps=5)
    assert torch.equal(model.head.weight, start)
    train_step(context, _batch(), step=2, num_steps=5)  # the third batch: the optimizer steps
    stepped = model.head.weight.detach().clone()
    assert not torch.equal(stepped, start) and model.head.weight.grad is None
    assert torch.allclose(ema.model.head.weight, 0.5 * start + 0.5 * stepped)  # the average followed the step
    train_step(context, _batch(), step=3, num_steps=5)
    assert torch.equal(model.head.weight, stepped)
    train_step(context, _batch(), step=4, num_steps=5)  # the epoch's last batch steps, accumulated or not
    assert not torch.equal(model.head.weight, stepped)
