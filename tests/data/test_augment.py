"""Paired augmentation: RGB and depth share geometry; per-sample seeds make epochs differ and repeat."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from raymc.data.augment import (
    TrainView,
    augment_batch,
    cutmix,
    eval_batch,
    mix_batch,
    mixup,
)
from raymc.data.draws import TrainParams


def ramp_batch(n: int = 4, h: int = 48, w: int = 64) -> dict[str, np.ndarray]:
    """RGB whose red channel encodes the column and depth that encodes the same column."""
    cols = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    rows = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    rgb = np.stack([cols * 4, rows * 4, np.full_like(cols, 128)], axis=-1).astype(np.uint8)
    depth = (cols + 1) / 10
    return {
        "rgb": np.stack([rgb] * n),
        "depth": np.stack([depth] * n).astype(np.float32),
        "label": np.arange(n),
        "index": np.arange(100, 100 + n),
    }


def test_shapes_and_dtypes():
    out = augment_batch(ramp_batch(), seed=0, epoch=1, image_size=32, crop_scale=0.3)
    assert out["rgb"].shape == (4, 3, 32, 32) and out["rgb"].dtype == np.uint8
    assert out["depth"].shape == (4, 1, 32, 32) and out["depth"].dtype == np.float32
    assert out["label"].dtype == np.int64


def test_read_only_rows_augment_without_a_warning():
    """--cache's rows come from Ray's object store as read-only arrays; torch warns on those."""
    batch = ramp_batch()
    for column in ("rgb", "depth"):
        batch[column].setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = augment_batch(batch, seed=0, epoch=1, image_size=32, crop_scale=0.3)
    assert out["rgb"].shape == (4, 3, 32, 32)


def test_rgb_and_depth_get_the_same_crop_and_flip():
    """Both streams encode the source column; after the shared geometric transform they agree."""
    batch = ramp_batch(1)
    view = TrainView(24, 0.2)
    image = torch.from_numpy(batch["rgb"][0]).permute(2, 0, 1)
    depth = torch.from_numpy(batch["depth"][0])[None]
    for seed in range(10):
        drawn = view.sample(seed, 1, np.array([0]), np.array([48]), np.array([64]))
        params = dataclasses.replace(TrainParams.at(drawn, 0), jitter_order=())  # no jitter
        rgb, cropped_depth = view.apply(params, image, depth)
        rgb_column = rgb[0].float().mean(0) / 4  # red = 4 x source column (bilinear)
        depth_column = cropped_depth[0].mean(0) * 10 - 1  # depth = (source column + 1) / 10 (nearest)
        assert torch.allclose(rgb_column, depth_column, atol=2.0), seed


def test_depth_keeps_metric_values_and_missing_zeros():
    batch = ramp_batch(2)
    batch["depth"][:, :, :10] = 0.0
    out = augment_batch(batch, seed=0, epoch=1, image_size=32, crop_scale=1.0)
    allowed = set(np.round(np.unique(batch["depth"]), 5))
    assert set(np.round(np.unique(out["depth"]), 5)) <= allowed  # nearest neighbour: no blended depths


def test_same_seed_and_epoch_repeat_other_epochs_differ():
    a = augment_batch(ramp_batch(), seed=7, epoch=2, image_size=32, crop_scale=0.2)
    b = augment_batch(ramp_batch(), seed=7, epoch=2, image_size=32, crop_scale=0.2)
    c = augment_batch(ramp_batch(), seed=7, epoch=3, image_size=32, crop_scale=0.2)
    assert np.array_equal(a["rgb"], b["rgb"]) and np.array_equal(a["depth"], b["depth"])
    assert not np.array_equal(a["rgb"], c["rgb"])


def test_a_sample_does_not_depend_on_its_batch_mates():
    whole = augment_batch(ramp_batch(4), seed=1, epoch=1, image_size=32, crop_scale=0.2)
    part = {k: v[2:] for k, v in ramp_batch(4).items()}
    alone = augment_batch(part, seed=1, epoch=1, image_size=32, crop_scale=0.2)
    assert np.array_equal(whole["rgb"][2:], alone["rgb"])


def test_augmentation_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    augment_batch(ramp_batch(), seed=1, epoch=1, image_size=32, crop_scale=0.2)
    assert torch.equal(torch.rand(3), expected)


def test_eval_view_is_a_deterministic_centre_crop():
    batch = ramp_batch(2, h=48, w=64)
    out = eval_batch(batch, image_size=32, resize=40)
    again = eval_batch(batch, image_size=32, resize=40)
    assert out["rgb"].shape == (2, 3, 32, 32) and np.array_equal(out["rgb"], again["rgb"])
    # resize 48x64 -> 40x53, centre crop 32: the crop is centred, so the depth ramp is symmetric around the middle
    row = out["depth"][0, 0, 16]
    assert row[0] > 0 and row[-1] < batch["depth"][0].max()


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_mixup_targets_sum_to_one_and_streams_share_lambda(alpha):
    torch.manual_seed(0)
    x1 = torch.arange(8, dtype=torch.float32).view(4, 2)
    x2 = 10 * x1
    labels = torch.tensor([0, 1, 2, 1])
    (m1, m2), targets = mixup([x1, x2], labels, alpha=alpha, num_classes=3)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert torch.allclose(m2, 10 * m1)  # same lambda and permutation in both streams
    smoothed_loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    assert torch.isfinite(smoothed_loss(torch.zeros(4, 3), targets))


def rgbd_batch(n: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB and depth whose every pixel says which sample it came from (rgb = index, depth = 10 x index)."""
    index = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    return index.expand(n, 3, size, size).clone(), 10 * index.expand(n, 1, size, size).clone(), torch.arange(n) % 3


def test_cutmix_cuts_the_same_box_from_rgb_and_depth_and_weights_targets_by_its_area():
    torch.manual_seed(3)
    rgb, depth, labels = rgbd_batch()
    (mixed_rgb, mixed_depth), targets = cutmix([rgb, depth], labels, alpha=1.0, num_classes=3)
    pasted = mixed_rgb[:, 0] != rgb[:, 0]  # pixels that came from another sample
    assert pasted.any() and not pasted.all()
    assert torch.equal(mixed_depth[:, 0] != depth[:, 0], pasted)  # the same box in both streams
    assert torch.equal(mixed_depth[:, 0], 10 * mixed_rgb[:, 0])  # from the same neighbour
    area = pasted[0].float().mean()
    own = torch.nn.functional.one_hot(labels, 3).float()
    assert torch.allclose(targets, (1 - area) * own + area * own.roll(1, 0))
    assert torch.allclose(targets.sum(1), torch.ones(6))  # soft targets still sum to 1
    assert torch.isfinite(torch.nn.CrossEntropyLoss(label_smoothing=0.1)(torch.zeros(6, 3), targets))


def test_with_mixup_and_cutmix_each_batch_takes_one_as_the_switch_probability_says():
    rgb, depth, labels = rgbd_batch()
    kinds = []
    torch.manual_seed(0)
    for _ in range(200):
        (mixed, _), _ = mix_batch(
            [rgb, depth], labels, mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.25, num_classes=3
        )
        fractional = (mixed != mixed.round()).any()  # mixup blends pixel values; CutMix only moves them
        kinds.append("mixup" if fractional else "cutmix")
    assert 0.15 < kinds.count("cutmix") / len(kinds) < 0.35
    (mixed, _), _ = mix_batch([rgb, depth], labels, mixup_alpha=0.0, cutmix_alpha=1.0, switch_prob=0.0, num_classes=3)
    assert not (mixed != mixed.round()).any()  # CutMix alone: always CutMix
