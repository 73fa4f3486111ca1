"""Validation of one epoch's weights on one worker: loss, top-1/top-5, mean class accuracy and
per-pathway accuracy over the worker's validation batches, reduced across ranks.

Takes its model, batches and settings explicitly (no Ray): the loop (raymc.loop) passes the
worker's shard, and validates the weights and, with --ema-decay, their average.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raymc.analysis import pathway_logits
from raymc.data.spec import DataSpec, to_model_inputs
from raymc.loss_window import all_reduce
from raymc.metrics import batch_counts, count_keys, mean_class_accuracy
from raymc.precision import Precision


def core_pathways(model: nn.Module) -> list[str]:
    """Pathway names a model's validation reports: 'full' plus '<stream>_only' for two streams."""
    if getattr(model, "num_streams", 1) == 2:
        return ["full", *(f"{name}_only" for name in model.stream_names)]
    return ["full"]


def val_metric_names(model: nn.Module, spec: DataSpec) -> list[str]:
    """The metrics validate() returns for `model`, known before any batch: its keys follow
    count_keys, as validate's do."""
    pathway_names = [name for name in core_pathways(model) if name != "full"]
    counted = count_keys(spec.num_classes, pathway_names)
    names = ["val_loss", "val_acc", "val_mean_class_acc", *(["val_acc5"] if "top5" in counted else [])]
    return names + [f"val_acc_{name}" for name in pathway_names]


def _broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics: each rank's last training forward updated
    its own, and rank 0's are the ones the checkpoint keeps, so every rank validates those."""
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def validate(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    spec: DataSpec,
    device: torch.device,
    precision: Precision,
) -> tuple[dict[str, float], dict[str, Any]]:
    """val_metric_names' metrics of `model` (unwrapped, in eval mode) over every batch, reduced
    across ranks, and the evaluation: the confusion matrix and pathway accuracies.

    No collective calls per batch, so ranks may see different numbers of validation batches.
    """
    _broadcast_buffers(model)
    model.eval()
    confusion = torch.zeros(spec.num_classes, spec.num_classes, dtype=torch.int64, device=device)
    sums: dict[str, torch.Tensor] = {}
    for batch in batches:
        inputs = to_model_inputs(batch, spec, device, channels_last=device.type == "cuda")
        labels = batch["label"].to(device, non_blocking=True)
        with precision.autocast(device):
            outputs = pathway_logits(model, inputs)
        counts = batch_counts({name: out.float() for name, out in outputs.items()}, labels, spec.num_classes)
        confusion += counts.pop("confusion")
        for key, value in counts.items():
            sums[key] = sums.get(key, 0) + value
    pathway_names = [name for name in core_pathways(model) if name != "full"]
    names = count_keys(spec.num_classes, pathway_names)
    packed = torch.stack([torch.as_tensor(sums.get(n, 0.0), device=device, dtype=torch.float64) for n in names])
    reduced = dict(zip(names, all_reduce(packed).tolist()))
    confusion = all_reduce(confusion)
    samples = max(reduced["samples"], 1.0)
    metrics = {
        "val_loss": reduced["loss"] / samples,
        "val_acc": reduced["top1"] / samples,
        "val_mean_class_acc": mean_class_accuracy(confusion),
    }
    if "top5" in reduced:
        metrics["val_acc5"] = reduced["top5"] / samples
    pathways = {"full": metrics["val_acc"]}
    for name in pathway_names:
        metrics[f"val_acc_{name}"] = pathways[name] = reduced[name] / samples
    return metrics, {"confusion": confusion.cpu().tolist(), "pathways": pathways if len(pathways) > 1 else None}
