"""Metrics on small hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from raymc.metrics import confusion_matrix, mean_class_accuracy, per_class_accuracy, topk_correct

# Three samples, six classes. Ranking of classes per sample (best first):
#   sample 0: 0, 1, 2, 3, 4, 5   target 0 -> top-1 hit
#   sample 1: 5, 4, 3, 2, 1, 0   target 3 -> top-3 hit, not top-1/top-2
#   sample 2: 2, 3, 4, 5, 0, 1   target 1 -> only a top-6 hit
LOGITS = torch.tensor(
    [
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [2.0, 1.0, 6.0, 5.0, 4.0, 3.0],
    ]
)
TARGETS = torch.tensor([0, 3, 1])


def test_topk_correct_counts_hits_per_k():
    counts = topk_correct(LOGITS, TARGETS, ks=(1, 2, 3, 5, 6))
    assert {k: v.item() for k, v in counts.items()} == {1: 1, 2: 1, 3: 2, 5: 2, 6: 3}
    assert counts[1].dtype == torch.int64


def test_topk_correct_skips_k_larger_than_the_class_count():
    counts = topk_correct(LOGITS[:, :4], torch.tensor([0, 3, 1]), ks=(1, 5))
    assert list(counts) == [1]


def test_topk_counts_add_up_across_batches():
    whole = topk_correct(LOGITS, TARGETS)
    parts = [topk_correct(LOGITS[i : i + 1], TARGETS[i : i + 1]) for i in range(3)]
    assert {k: sum(p[k] for p in parts).item() for k in whole} == {k: v.item() for k, v in whole.items()}


def test_confusion_matrix_rows_are_true_classes():
    preds = torch.tensor([0, 1, 1, 2, 0])
    targets = torch.tensor([0, 1, 2, 2, 2])
    cm = confusion_matrix(preds, targets, num_classes=4)
    expected = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    assert cm.dtype == torch.int64
    assert torch.equal(cm, expected)


def test_per_class_and_mean_class_accuracy_ignore_classes_without_samples():
    cm = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    per_class = per_class_accuracy(cm)
    torch.testing.assert_close(per_class[:3], torch.tensor([1.0, 1.0, 1 / 3]))
    assert math.isnan(per_class[3].item())
    assert mean_class_accuracy(cm) == pytest.approx((1 + 1 + 1 / 3) / 3)


def test_mean_class_accuracy_differs_from_overall_accuracy_on_imbalanced_data():
    # class 0: 8 of 8 right; class 1: 0 of 2 right -> accuracy 0.8, mean class accuracy 0.5
    cm = confusion_matrix(torch.zeros(10, dtype=torch.long), torch.tensor([0] * 8 + [1] * 2), num_classes=2)
    assert mean_class_accuracy(cm) == pytest.approx(0.5)
