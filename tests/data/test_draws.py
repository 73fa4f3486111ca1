"""The training view's draws: torchvision's algorithm and ranges, a pure function of (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import transforms

from raymc.data import draws
from raymc.data.augment import COLOR_JITTER, TrainView
from raymc.data.draws import CROP_RATIO, TrainParams

N = 20_000
SCALE = (0.08, 1.0)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def _torchvision_boxes(height: int, width: int, n: int) -> np.ndarray:
    torch.manual_seed(0)
    shape_only = torch.empty(()).expand(3, height, width)
    get_params = transforms.RandomResizedCrop.get_params
    return np.asarray([get_params(shape_only, list(SCALE), list(CROP_RATIO)) for _ in range(n)])


def _our_boxes(height: int, width: int, n: int) -> np.ndarray:
    drawn = TrainView(32, SCALE[0]).sample(3, 1, np.arange(n), np.full(n, height), np.full(n, width))
    return np.stack([drawn[k] for k in ("top", "left", "height", "width")], axis=1)


@pytest.mark.parametrize(("height", "width"), [(375, 500), (60, 45)])
def test_crop_boxes_follow_torchvisions_distribution(height: int, width: int):
    """Area fraction, aspect ratio and position of the boxes: the same distributions as
    RandomResizedCrop.get_params (two-sample KS statistic below 0.025: at 20,000 draws each, a
    different distribution, e.g. a uniform instead of log-uniform ratio, scores far above)."""
    ours, theirs = _our_boxes(height, width, N), _torchvision_boxes(height, width, N)
    for boxes in (ours, theirs):
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()

    def features(boxes: np.ndarray) -> dict[str, np.ndarray]:
        top, left, h, w = boxes.T.astype(float)
        return {
            "area": h * w / (height * width),
            "log ratio": np.log(w / h),
            "top": top / np.maximum(height - h, 1),
            "left": left / np.maximum(width - w, 1),
        }

    ours, theirs = features(ours), features(theirs)
    for name in ours:
        assert _ks(ours[name], theirs[name]) < 0.025, name


def test_a_box_no_try_fits_is_torchvisions_centre_crop():
    """A 4 x 400 strip: no box of at least 8% area and ratio <= 4/3 fits, so both fall back alike."""
    assert (_our_boxes(4, 400, 50) == _torchvision_boxes(4, 400, 1)).all()


def test_flips_and_jitter_follow_torchvisions_ranges():
    drawn = TrainView(32, 0.08).sample(0, 1, np.arange(N), np.full(N, 50), np.full(N, 50))
    assert abs(drawn["flip"].mean() - 0.5) < 0.02
    jitter = transforms.ColorJitter(**COLOR_JITTER)
    for name in ("brightness", "contrast", "saturation"):
        low, high = getattr(jitter, name)
        values = drawn[name]
        assert values.min() >= low and values.max() <= high
        assert _ks(values, np.random.default_rng(0).uniform(low, high, N)) < 0.025, name
    orders = drawn["jitter_order"]
    assert (np.sort(orders, axis=1) == np.arange(4)).all()  # each a permutation of the four adjustments
    assert len({tuple(o) for o in orders}) == 24  # all of them occur
    first = np.bincount(orders[:, 0], minlength=4) / N
    assert np.allclose(first, 0.25, atol=0.02)


def test_draws_are_a_function_of_seed_epoch_and_index():
    view = TrainView(32, 0.08)
    sizes = np.full(8, 90), np.full(8, 120)
    whole = view.sample(5, 2, np.arange(100, 108), *sizes)
    again = view.sample(5, 2, np.arange(100, 108), *sizes)
    alone = view.sample(5, 2, np.array([106]), np.array([90]), np.array([120]))
    assert all(np.array_equal(whole[k], again[k]) for k in whole)
    assert TrainParams.at(alone, 0) == TrainParams.at(whole, 6)
    other_epoch = view.sample(5, 3, np.arange(100, 108), *sizes)
    other_seed = view.sample(6, 2, np.arange(100, 108), *sizes)
    for other in (other_epoch, other_seed):
        assert not np.array_equal(whole["top"], other["top"]) or not np.array_equal(whole["left"], other["left"])


def test_uniforms_are_uniform_and_independent_across_draws():
    u = draws.uniforms(0, 1, np.arange(N), 4)
    assert u.min() >= 0 and u.max() < 1
    assert _ks(u[:, 0], np.random.default_rng(1).uniform(size=N)) < 0.025
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.03  # neighbouring samples


def test_params_round_trip_through_columns():
    drawn = TrainView(32, 0.5).sample(0, 1, np.array([3, 4]), np.array([40, 50]), np.array([60, 70]))
    params = TrainParams.at(drawn, 1)
    assert isinstance(params.top, int) and isinstance(params.flip, bool) and len(params.jitter_order) == 4
    assert params.height <= 50 and params.width <= 70
