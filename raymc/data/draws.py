"""The training view's random draws (crop box, flip, colour jitter) for a batch of samples at once.

A sample's draws are a pure function of (seed, epoch, sample index): crops differ every epoch,
repeat for a given seed, do not depend on how Ray Data batches rows, and are the same on the host
path and on --decode-on device, where Ray Data draws them from the image's header and the
training worker applies them after decoding.

They follow torchvision's draws step for step and with the same ranges: RandomResizedCrop.get_params
(ten tries of an area fraction and a log-uniform aspect ratio, the first box that fits, else the
centre crop clamped to the ratio range), RandomHorizontalFlip (p = 0.5) and ColorJitter.get_params
(a random order of the adjustments, then uniform factors). What differs is the source of the
numbers: torchvision takes them from torch's global generator, one small tensor op at a time, which
cost 120 us a sample (seeding included); here they come from a counter-based generator over numpy
arrays for the whole batch (bench/RESULTS.md), the cost that decides Ray Data's CPU per image with
--decode-on device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect ratios
CROP_TRIES = 10  # RandomResizedCrop.get_params' tries before its centre-crop fallback
# The uniforms of one sample, by use: per crop try an area fraction and a log aspect ratio, then the
# box's top and left, the flip, a sort key per jitter adjustment (brightness, contrast, saturation,
# hue) and the three factors.
_AREA = slice(0, CROP_TRIES)
_RATIO = slice(CROP_TRIES, 2 * CROP_TRIES)
_TOP, _LEFT, _FLIP = 2 * CROP_TRIES, 2 * CROP_TRIES + 1, 2 * CROP_TRIES + 2
_ORDER = slice(2 * CROP_TRIES + 3, 2 * CROP_TRIES + 7)
_FACTORS = slice(2 * CROP_TRIES + 7, 2 * CROP_TRIES + 10)
DRAWS = 2 * CROP_TRIES + 10

# SplitMix64 (Steele, Lea and Flood 2014): a Weyl sequence through a 64-bit finalizer.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class TrainParams:
    """One sample's training-view draws: crop box, horizontal flip, colour jitter (order, factors)."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter_order: tuple[int, ...]  # 0 brightness, 1 contrast, 2 saturation, 3 hue (off)
    brightness: float
    contrast: float
    saturation: float

    @classmethod
    def at(cls, columns: dict[str, np.ndarray], i: int) -> TrainParams:
        """Row i of `sample`'s columns (also when they have travelled as Ray Data columns)."""
        box = (int(columns[name][i]) for name in ("top", "left", "height", "width"))
        order = tuple(int(v) for v in columns["jitter_order"][i])
        factors = (float(columns[name][i]) for name in ("brightness", "contrast", "saturation"))
        return cls(*box, bool(columns["flip"][i]), order, *factors)


def uniforms(seed: int, epoch: int, indices: np.ndarray, count: int) -> np.ndarray:
    """(N, count) floats in [0, 1): draw k of sample indices[n] is SplitMix64 at counter
    index * count + k of a stream keyed by (seed, epoch)."""
    key = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)
    counters = np.asarray(indices, dtype=np.uint64)[:, None] * np.uint64(count) + np.arange(count, dtype=np.uint64)
    z = key + counters * _GAMMA  # uint64 arithmetic wraps, as SplitMix64 means it to
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample(
    seed: int,
    epoch: int,
    indices: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    *,
    scale: Sequence[float],
    jitter: Sequence[Sequence[float]],
) -> dict[str, np.ndarray]:
    """Every sample's draws as columns named as TrainParams' fields (jitter_order (N, 4)), for
    images of heights x widths; `jitter` is the (low, high) range of brightness, contrast and
    saturation factors."""
    u = uniforms(seed, epoch, indices, DRAWS)
    top, left, height, width = _crop_boxes(u, np.asarray(heights, float), np.asarray(widths, float), scale)
    low, high = np.asarray(jitter, dtype=np.float64).T
    factors = low + (high - low) * u[:, _FACTORS]
    return {
        "top": top,
        "left": left,
        "height": height,
        "width": width,
        "flip": u[:, _FLIP] < 0.5,
        "jitter_order": np.argsort(u[:, _ORDER], axis=1, kind="stable").astype(np.int64),
        "brightness": factors[:, 0],
        "contrast": factors[:, 1],
        "saturation": factors[:, 2],
    }


def _crop_boxes(
    u: np.ndarray, image_h: np.ndarray, image_w: np.ndarray, scale: Sequence[float]
) -> tuple[np.ndarray, ...]:
    """(top, left, height, width) int64 arrays: RandomResizedCrop.get_params for each image."""
    n = len(u)
    target = (image_h * image_w)[:, None] * (scale[0] + (scale[1] - scale[0]) * u[:, _AREA])
    log_low, log_high = np.log(CROP_RATIO)
    aspect = np.exp(log_low + (log_high - log_low) * u[:, _RATIO])
    w = np.round(np.sqrt(target * aspect))  # round half to even, as Python's round
    h = np.round(np.sqrt(target / aspect))
    fits = (w > 0) & (w <= image_w[:, None]) & (h > 0) & (h <= image_h[:, None])
    found, first = fits.any(axis=1), fits.argmax(axis=1)
    w, h = w[np.arange(n), first], h[np.arange(n), first]
    # No try fitted: the whole image, cut down to the nearest aspect ratio in range, centred.
    ratio = image_w / image_h
    narrow, wide = ratio < CROP_RATIO[0], ratio > CROP_RATIO[1]
    fallback_w = np.where(wide, np.round(image_h * CROP_RATIO[1]), image_w)
    fallback_h = np.where(narrow, np.round(image_w / CROP_RATIO[0]), image_h)
    w, h = np.where(found, w, fallback_w), np.where(found, h, fallback_h)
    top = np.where(found, np.floor(u[:, _TOP] * (image_h - h + 1)), (image_h - h) // 2)
    left = np.where(found, np.floor(u[:, _LEFT] * (image_w - w + 1)), (image_w - w) // 2)
    return tuple(a.astype(np.int64) for a in (top, left, h, w))
