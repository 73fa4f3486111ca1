"""Classification metrics as counts in tensors.

Counts (not rates) stay on the batch's device and add up across batches and across workers
(`torch.distributed.all_reduce`), so the rates computed at the end are exact for the whole split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "mean_class_accuracy", "per_class_accuracy", "topk_correct"]


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
