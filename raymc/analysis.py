"""Pathway analysis: how well does each stream classify alone, through the model's real fusion?

A two-stream model's trunks run once; the pooled features then go through the model's own
`classify` (fusion + dropout + head) three times: both streams, and each stream with the other's
features replaced by zeros. Nothing runs in train mode, so BN statistics never change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from raymc.metrics import topk_correct

__all__ = ["analyze_pathways", "pathway_logits"]


def pathway_logits(model: nn.Module, inputs: Sequence[Tensor]) -> dict[str, Tensor]:
    """Logits per pathway: {"full"} for any model, plus {"<name>_only"} per stream of a two-stream one.

    Call it in eval mode (under `torch.no_grad()`), as a validation loop does; it does not switch
    modes itself, so it raises if the model is training rather than silently update BN statistics.
    """
    if model.training:
        raise ValueError("pathway_logits needs the model in eval mode; call model.eval() or use analyze_pathways")
    net = model.module if isinstance(model, DistributedDataParallel) else model
    if getattr(net, "num_streams", 1) != 2:
        return {"full": model(*inputs)}
    f1, f2 = net.features(*inputs)
    name1, name2 = net.stream_names
    return {
        "full": net.classify(f1, f2),
        f"{name1}_only": net.classify(f1, torch.zeros_like(f2)),
        f"{name2}_only": net.classify(torch.zeros_like(f1), f2),
    }


def analyze_pathways(model: nn.Module, batches: Iterable[tuple[Sequence[Tensor], Tensor]]) -> dict[str, float]:
    """Top-1 accuracy per pathway over `batches` of (inputs, targets).

    Runs in eval mode under no_grad and then restores every submodule's previous mode.
    Inputs and targets are moved to the model's device.
    """
    modes = {m: m.training for m in model.modules()}
    device = next(model.parameters()).device
    correct: dict[str, Tensor] = {}
    seen = 0
    model.eval()
    try:
        with torch.no_grad():
            for inputs, targets in batches:
                targets = targets.to(device)
                logits = pathway_logits(model, [x.to(device) for x in inputs])
                for name, out in logits.items():
                    correct[name] = correct.get(name, 0) + topk_correct(out, targets, ks=(1,))[1]
                seen += targets.shape[0]
    finally:
        for module, training in modes.items():
            module.train(training)
    return {name: count.item() / seen for name, count in correct.items()}
