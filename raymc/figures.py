"""Every figure raymc draws: a run's training curves, confusion matrix and pathway bars, a grid
of predictions, and an experiment's metric per epoch and against each hyperparameter.

Figures are built on matplotlib's object API (no pyplot, no global backend) and written as PNG
through `raymc.storage`, so they work in Ray workers and on any filesystem. No ray import.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from raymc import storage

if TYPE_CHECKING:
    from raymc.results import Results

DPI = 120
# Accuracy curves drawn on the training-curves plot, in legend order, with their labels.
ACCURACY_CURVES = {
    "train_acc": "train",
    "val_acc": "val",
    "val_acc5": "val top-5",
    "val_mean_class_acc": "val mean class",
    "val_acc_rgb_only": "val RGB only",
    "val_acc_depth_only": "val depth only",
}
CONFUSION_ANNOTATE_MAX = 30  # annotate counts up to this many classes
CONFUSION_TICKS_MAX = 60  # name classes on the axes up to this many
PREDICTION_COLUMNS = 4
RIGHT, WRONG = "tab:green", "tab:red"
LOG_SCALE_SPAN = 20  # a positive quantity spanning this factor or more is drawn on a log axis
TRIAL_STYLE = {
    "completed": {"linestyle": "-", "alpha": 0.9},
    "pruned": {"linestyle": "--", "color": "0.6", "alpha": 0.8},
}
OTHER_TRIAL_STYLE = {"linestyle": ":", "color": "0.4", "alpha": 0.8}


def save_png(location: storage.P, fig: Figure) -> storage.P:
    """Write fig as a PNG at a local path or URI, atomically; return where."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return storage.write_bytes(location, buffer.getvalue())


# ---------------------------------------------------------------- a training run


def training_curves_figure(table: pd.DataFrame, summary: Mapping[str, Any]) -> Figure:
    """Three panels against epoch: loss, accuracy (incl. pathways), learning rate (log)."""
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    epochs = table["epoch"].to_numpy()
    style = {"marker": "o", "markersize": 3} if len(epochs) <= 40 else {}
    _plot_curves(loss_ax, table, {"train_loss": "train", "val_loss": "val"}, style)
    loss_ax.set(title="Loss", ylabel="cross-entropy")
    _plot_curves(acc_ax, table, ACCURACY_CURVES, style)
    acc_ax.set(title="Accuracy", ylabel="accuracy")
    acc_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    _plot_curves(lr_ax, table, {"lr": "learning rate"}, style)
    lr_ax.set(title="Learning rate", ylabel="lr")
    if "lr" in table and (table["lr"] > 0).any():
        lr_ax.set_yscale("log", nonpositive="mask")
    best = summary.get("best_epoch")
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.set_xlabel("epoch")
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if best is not None:
            ax.axvline(best, color="0.5", linestyle=":", linewidth=1, label=f"best epoch ({best})")
    for ax in (loss_ax, acc_ax):
        if ax.has_data():
            ax.legend(fontsize="small")
    fig.suptitle(_run_title(summary))
    return fig


def _plot_curves(ax: Axes, table: pd.DataFrame, curves: Mapping[str, str], style: Mapping[str, Any]) -> None:
    """Plot each present history column against epoch; say so when none is present."""
    present = [key for key in curves if key in table]
    for key in present:
        linestyle = "--" if key.endswith("_only") else "-"  # per-pathway curves
        ax.plot(table["epoch"], table[key], label=curves[key], linestyle=linestyle, **style)
    if not present:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str], summary: Mapping[str, Any]) -> Figure:
    """Row-normalised confusion matrix, counts annotated for up to 30 classes."""
    counts = np.asarray(confusion, dtype=np.int64)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(
            f"confusion has shape {counts.shape}, expected ({len(classes)}, {len(classes)}) for the given classes"
        )
    support = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    size = min(4.0 + 0.3 * len(classes), 16.0)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class", format=PercentFormatter(xmax=1))
    if len(classes) <= CONFUSION_ANNOTATE_MAX:
        _annotate_counts(ax, counts, rates)
    if len(classes) <= CONFUSION_TICKS_MAX:
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks, labels=classes, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(ticks, labels=classes)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(_confusion_title(counts, support, summary))
    return fig


def _annotate_counts(ax: Axes, counts: np.ndarray, rates: np.ndarray) -> None:
    """Write each cell's count, white on dark cells."""
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if rates[row, col] > 0.5 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize="small")


def _confusion_title(counts: np.ndarray, support: np.ndarray, summary: Mapping[str, Any]) -> str:
    """Overall and mean class accuracy (over classes with samples) of the matrix."""
    total = counts.sum()
    accuracy = np.trace(counts) / total if total else math.nan
    has_samples = support[:, 0] > 0
    per_class = np.diag(counts)[has_samples] / support[has_samples, 0]
    mean_class = per_class.mean() if per_class.size else math.nan
    best = summary.get("best_epoch")
    where = f" (best epoch {best})" if best is not None else ""
    return f"Confusion matrix{where}\naccuracy {accuracy:.1%}, mean class accuracy {mean_class:.1%}, {total} samples"


def pathways_figure(pathways: Mapping[str, float], *, num_classes: int) -> Figure:
    """Bar chart of accuracy through both streams and each stream alone, with chance level."""
    labels = [_pathway_label(key) for key in pathways]
    values = [float(value) for value in pathways.values()]
    heights = [value if math.isfinite(value) else 0.0 for value in values]
    fig = Figure(figsize=(1.6 + 1.5 * len(values), 4.2), layout="constrained")
    ax = fig.subplots()
    colours = ["tab:purple", "tab:red", "tab:blue", "tab:green", "tab:orange"]
    bars = ax.bar(labels, heights, color=[colours[i % len(colours)] for i in range(len(values))])
    ax.bar_label(bars, labels=[f"{v:.1%}" if math.isfinite(v) else "n/a" for v in values])
    title = "Pathway analysis"
    if num_classes > 0:
        ax.axhline(1 / num_classes, color="0.4", linestyle="--", linewidth=1)
        title += f"\ndashed line: chance level (1/{num_classes})"
    ax.set_ylim(0, 1.1)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set(ylabel="validation accuracy", title=title)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _pathway_label(key: str) -> str:
    """Bar label of a pathway key: full -> both streams, rgb_only -> RGB only, x_only -> x only."""
    if key == "full":
        return "both streams"
    words = key.split("_")
    return " ".join(word.upper() if word.lower() == "rgb" else word for word in words)


def _run_title(summary: Mapping[str, Any]) -> str:
    """The figure title: "<model> on <dataset>" when the summary names them."""
    parts = [str(summary[key]) for key in ("model", "dataset") if summary.get(key)]
    return " on ".join(parts) if parts else "Training curves"


# ---------------------------------------------------------------- predictions


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
    columns = min(PREDICTION_COLUMNS, max(n, 1))
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
        ax.set_title(
            f"true: {true_classes[i]}\npred: {pred_classes[i]}", color=WRONG if wrong else RIGHT, fontsize="small"
        )
    streams = "RGB | depth, " if depth is not None else ""
    fig.suptitle(f"{title} ({streams}{mistakes} of {n} wrong, in red)")
    return fig


# ---------------------------------------------------------------- an experiment


def epochs_figure(results: Results) -> Figure:
    """The metric against epoch, one line per trial; trials ASHA stopped are grey and dashed."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    metric, status = results.metric, results.trials.set_index("trial_id")["status"].to_dict()
    best_id = results.best_config.get("trial_id")
    for trial_id, history in results.epochs.groupby("trial_id", sort=False):
        if metric not in history:
            continue
        kind = status.get(trial_id, "unfinished")
        style = dict(TRIAL_STYLE.get(kind, OTHER_TRIAL_STYLE))
        if trial_id == best_id:
            style.update(linewidth=2.8, alpha=1.0, label=f"best: {trial_id}")
        ax.plot(history["epoch"], history[metric], marker="o", markersize=3, **style)
    counts = pd.Series(status).value_counts()
    ax.plot([], [], **TRIAL_STYLE["completed"], color="C0", label=f"completed ({counts.get('completed', 0)})")
    ax.plot([], [], **TRIAL_STYLE["pruned"], label=f"stopped early by ASHA ({counts.get('pruned', 0)})")
    _maybe_log_y(ax, results.epochs.get(metric), metric)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, {len(status)} trials")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def params_figure(results: Results) -> Figure:
    """Each trial's best metric against each searched parameter; trials that did not complete
    (stopped by ASHA, diverged, failed) hollow and grey."""
    params, metric = results.params, results.metric
    columns = min(3, len(params))
    rows = math.ceil(len(params) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    y = results.trials[f"best_{metric}"].astype(float)
    pruned = results.trials["status"] != "completed"
    for i, param in enumerate(params):
        ax = fig.add_subplot(rows, columns, i + 1)
        x = results.trials[f"config/{param}"]
        positions = _axis_positions(ax, x)
        ax.scatter(positions[~pruned], y[~pruned], color="C0", label="completed", zorder=3)
        ax.scatter(positions[pruned], y[pruned], facecolors="none", edgecolors="0.5", label="not completed", zorder=3)
        _maybe_log_y(ax, y, metric)
        ax.set_xlabel(param)
        ax.set_ylabel(f"best {metric}")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"best {metric} of each trial against each hyperparameter")
    return fig


def _maybe_log_y(ax: Any, values: pd.Series | None, metric: str) -> None:
    """Losses that span orders of magnitude (a diverging trial next to good ones) on a log axis."""
    finite = pd.to_numeric(values, errors="coerce").dropna() if values is not None else pd.Series(dtype=float)
    if metric.endswith("loss") and len(finite) and finite.min() > 0 and finite.max() / finite.min() >= LOG_SCALE_SPAN:
        ax.set_yscale("log")


def _axis_positions(ax: Any, values: pd.Series) -> pd.Series:
    """Numbers as they are (log axis when positive and spread), categories as 0, 1, ... with labels."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().sum() == values.notna().sum() and values.map(lambda v: not isinstance(v, bool)).all():
        finite = numeric.dropna()
        if len(finite) and finite.min() > 0 and finite.max() / finite.min() >= LOG_SCALE_SPAN:
            ax.set_xscale("log")
        return numeric
    categories = sorted(values.dropna().astype(str).unique())
    ax.set_xticks(range(len(categories)), categories)
    ax.set_xlim(-0.5, len(categories) - 0.5)
    return values.map(lambda v: categories.index(str(v)) if pd.notna(v) else np.nan).astype(float)
