"""Classification metrics as counts in tensors.

Counts (not rates) stay on the batch's device and add up across batches and across workers
(`torch.distributed.all_reduce`), so the rates computed at the end are exact for the whole split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "TOP_K",
    "batch_counts",
    "confusion_matrix",
    "count_keys",
    "mean_class_accuracy",
    "per_class_accuracy",
    "topk_correct",
]

TOP_K = 5  # the wider accuracy reported besides top-1


def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, Tensor]:
    """Number of samples whose target is among the k highest logits, per k (int64 scalars).

    A k larger than the number of classes is left out: every sample would count as correct.
    """
    ks = [k for k in ks if k <= logits.shape[1]]
    if not ks:
        return {}
    top = logits.topk(max(ks), dim=1).indices
    hits = top.eq(targets.view(-1, 1))
    return {k: hits[:, :k].any(dim=1).sum() for k in ks}


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """int64 (C, C) counts: row = true class, column = predicted class."""
    flat = targets.reshape(-1).long() * num_classes + preds.reshape(-1).long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: Tensor) -> Tensor:
    """Recall of each class (float); NaN for classes with no samples."""
    totals = confusion.sum(dim=1)
    return torch.where(totals > 0, confusion.diagonal().float() / totals.float(), torch.nan)


def mean_class_accuracy(confusion: Tensor) -> float:
    """Mean of the per-class accuracies over the classes that have samples (NYU's scene metric)."""
    return per_class_accuracy(confusion).nanmean().item()


def _counted_ks(num_classes: int) -> tuple[int, ...]:
    """Top-1, and top-5 with at least 5 classes (with fewer, every sample would be a top-5 hit)."""
    return tuple(k for k in (1, TOP_K) if k <= num_classes)


def count_keys(num_classes: int, pathways: Sequence[str] = ()) -> list[str]:
    """The scalar keys of `batch_counts`, known without a batch: a worker that has no validation
    batches still all-reduces the same counts as the others."""
    return ["loss", "samples", *(f"top{k}" for k in _counted_ks(num_classes)), *pathways]


def batch_counts(outputs: dict[str, Tensor], labels: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Additive counts of one batch, which validation and batch inference both sum up.

    `outputs` maps pathway names to float logits ("full": the whole model). Returns float64 scalars
    (loss sum, samples, top-1/top-5 hits, hits of each other pathway) and the int64 "confusion".
    """
    logits = outputs["full"]
    hits = topk_correct(logits, labels, ks=_counted_ks(num_classes))
    return {
        "loss": nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
        "samples": torch.tensor(labels.shape[0], device=labels.device, dtype=torch.float64),
        **{f"top{k}": count.double() for k, count in hits.items()},
        **{name: (out.argmax(1) == labels).sum().double() for name, out in outputs.items() if name != "full"},
        "confusion": confusion_matrix(logits.argmax(1), labels, num_classes),
    }
