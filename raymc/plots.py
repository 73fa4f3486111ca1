"""The predictions grid: samples as the model saw them, with true and predicted class.

Kept beside `raymc.outputs` (run plots), which it reuses for writing; like it, no pyplot and no ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

__all__ = ["predictions_figure"]

COLUMNS = 4
RIGHT, WRONG = "tab:green", "tab:red"


def _depth_rgb(depth: np.ndarray, top: float) -> np.ndarray:
    """(H, W) metres as (H, W, 3) uint8 through a colour map; missing readings (0) stay black."""
    scaled = np.clip(depth / top, 0.0, 1.0) if top > 0 else np.zeros_like(depth)
    rgb = (colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)
    rgb[depth <= 0] = 0
    return rgb


def predictions_figure(
    rgb: np.ndarray,
    depth: np.ndarray | None,
    true_classes: Sequence[str],
    pred_classes: Sequence[str],
    *,
    title: str = "Predictions",
) -> Figure:
    """A grid of samples (RGB, and depth beside it when given) titled "true / predicted";
    mistakes in red. rgb: (N, 3, H, W) uint8; depth: (N, 1, H, W) metres or None."""
    n = len(rgb)
    columns = min(COLUMNS, max(n, 1))
    rows = max(1, math.ceil(n / columns))
    width = 2.2 * (2 if depth is not None else 1)
    fig = Figure(figsize=(width * columns + 0.4, 2.5 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    top = float(np.percentile(depth[depth > 0], 99)) if depth is not None and (depth > 0).any() else 0.0
    mistakes = 0
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        image = np.asarray(rgb[i]).transpose(1, 2, 0)
        if depth is not None:
            image = np.hstack([image, _depth_rgb(np.asarray(depth[i])[0], top)])
        ax.imshow(image)
        wrong = true_classes[i] != pred_classes[i]
        mistakes += wrong
        ax.set_title(f"true: {true_classes[i]}\npred: {pred_classes[i]}", color=WRONG if wrong else RIGHT, fontsize="small")
    streams = "RGB | depth, " if depth is not None else ""
    fig.suptitle(f"{title} ({streams}{mistakes} of {n} wrong, in red)")
    return fig
