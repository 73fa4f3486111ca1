"""The files a finished run leaves for users: history tables, summary, plots, TensorBoard events.

Every file is written atomically (a temporary file in the same folder, then `os.replace`), so a
crash never leaves a half-written one. The TensorBoard folder is built beside the old one and
swapped in, so re-running never duplicates curves. This module does not import ray.
"""

from __future__ import annotations

import io
import json
import logging
import math
import numbers
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from raymc.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "confusion_figure",
    "history_frame",
    "pathways_figure",
    "read_history",
    "training_curves_figure",
    "write_run_outputs",
    "write_tensorboard",
]

DPI = 120
# Keras-style names of the seed script's training_history.csv: alias -> raymc history key.
KERAS_ALIASES = {"loss": "train_loss", "accuracy": "train_acc", "val_accuracy": "val_acc"}
# Accuracy curves drawn on the training-curves plot, in legend order, with their labels.
ACCURACY_CURVES = {
    "train_acc": "train",
    "val_acc": "val",
    "val_acc5": "val top-5",
    "val_mean_class_acc": "val mean class",
    "val_acc_rgb_only": "val RGB only",
    "val_acc_depth_only": "val depth only",
}
# History key -> TensorBoard tag; the text before "/" is the dashboard section.
TB_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "val_acc5": "accuracy/val_top5",
    "val_mean_class_acc": "accuracy/val_mean_class",
    "lr": "lr",
    "epoch_time_s": "perf/epoch_time_s",
    "images_per_s": "perf/images_per_s",
}
CONFUSION_ANNOTATE_MAX = 30  # annotate counts up to this many classes
CONFUSION_TICKS_MAX = 60  # name classes on the axes up to this many
TB_DIR = "tensorboard"
TB_TMP_PREFIX = ".tensorboard-tmp-"


# ---------------------------------------------------------------- public API


def write_run_outputs(
    run_dir: str | Path,
    *,
    history: list[dict[str, float]],
    summary: dict,
    classes: list[str],
    confusion: list[list[int]] | None,
    pathways: dict[str, float] | None,
) -> dict[str, Path]:
    """Write every output file of a run under run_dir and return {name: path} of each one.

    history holds one dict per epoch (1-based "epoch" key in each); confusion is the best
    epoch's (C, C) count matrix, rows = true class; pathways maps "full" / "x_only" to
    accuracies in [0, 1]. History and summary files are written first; the confusion and pathway
    outputs are left out when their input is None (and removed if an earlier call wrote them).
    """
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    table = history_frame(history)
    written = {
        "history_csv": _write_bytes(run_dir / "history.csv", _csv_bytes(table)),
        "history_json": _write_json(run_dir / "history.json", _history_records(table)),
        "summary_json": _write_json(run_dir / "summary.json", summary),
        "training_history_csv": _write_bytes(
            run_dir / "training_history.csv", _csv_bytes(_with_keras_aliases(table))
        ),
        "training_summary_csv": _write_bytes(
            run_dir / "training_summary.csv", _csv_bytes(pd.DataFrame([_flat_scalars(summary)]))
        ),
        "training_curves_png": _write_figure(
            run_dir / "plots" / "training_curves.png", training_curves_figure(table, summary)
        ),
    }
    optional = {
        "confusion_matrix_png": run_dir / "plots" / "confusion_matrix.png",
        "pathways_json": run_dir / "pathways.json",
        "pathways_png": run_dir / "plots" / "pathways.png",
    }
    if confusion is not None:
        written["confusion_matrix_png"] = _write_figure(
            optional["confusion_matrix_png"], confusion_figure(confusion, classes, summary)
        )
    if pathways is not None:
        written["pathways_json"] = _write_json(optional["pathways_json"], pathways)
        written["pathways_png"] = _write_figure(
            optional["pathways_png"], pathways_figure(pathways, num_classes=len(classes))
        )
    _remove_stale(path for name, path in optional.items() if name not in written)
    written["tensorboard"] = write_tensorboard(run_dir / TB_DIR, table)
    logger.info("wrote %d run outputs under %s", len(written), run_dir)
    return written


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """Read a run's history.csv: one row per epoch, columns as written."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: pass the folder of a finished run "
            "(the one holding summary.json and history.csv)"
        )
    return pd.read_csv(path)


# ---------------------------------------------------------------- tables


def history_frame(history: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per epoch; columns: epoch, then every other key in first-seen order."""
    if not history:
        raise ValueError("history is empty: write_run_outputs needs at least one epoch")
    missing = [i for i, row in enumerate(history) if "epoch" not in row]
    if missing:
        raise ValueError(f"history rows {missing} have no 'epoch' key")
    columns = list(dict.fromkeys(key for row in history for key in row))
    columns.remove("epoch")
    return pd.DataFrame(list(history), columns=["epoch", *columns])


def _with_keras_aliases(table: pd.DataFrame) -> pd.DataFrame:
    """A copy with the seed script's Keras column names added after the raymc ones."""
    aliased = table.copy()
    for alias, key in KERAS_ALIASES.items():
        if key in table and alias not in table:
            aliased[alias] = table[key]
    return aliased


def _history_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts; missing values (NaN) become None, i.e. JSON null."""
    return [
        {key: _jsonable(value) for key, value in row.items()}
        for row in table.astype(object).to_dict(orient="records")
    ]


def _flat_scalars(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar entries of summary; nested dicts flattened to "outer.inner"; lists left out."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat_scalars(value, prefix=f"{name}."))
        elif not isinstance(value, (list, tuple)):
            flat[name] = _jsonable(value)
    return flat


# ---------------------------------------------------------------- figures


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


def _plot_curves(
    ax: Axes, table: pd.DataFrame, curves: Mapping[str, str], style: Mapping[str, Any]
) -> None:
    """Plot each present history column against epoch; say so when none is present."""
    present = [key for key in curves if key in table]
    for key in present:
        linestyle = "--" if key.endswith("_only") else "-"  # per-pathway curves
        ax.plot(table["epoch"], table[key], label=curves[key], linestyle=linestyle, **style)
    if not present:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])


def confusion_figure(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], summary: Mapping[str, Any]
) -> Figure:
    """Row-normalised confusion matrix, counts annotated for up to 30 classes."""
    counts = np.asarray(confusion, dtype=np.int64)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(
            f"confusion has shape {counts.shape}, expected ({len(classes)}, {len(classes)}) "
            "for the given classes"
        )
    support = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    size = min(4.0 + 0.3 * len(classes), 16.0)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class",
                 format=PercentFormatter(xmax=1))
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
    return (
        f"Confusion matrix{where}\n"
        f"accuracy {accuracy:.1%}, mean class accuracy {mean_class:.1%}, {total} samples"
    )


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


# ---------------------------------------------------------------- TensorBoard


def write_tensorboard(tb_dir: Path, table: pd.DataFrame) -> Path:
    """Write each numeric history column as a scalar at step=epoch into a fresh tb_dir.

    The events go to a temporary sibling folder that then replaces tb_dir, so TensorBoard never
    sees two copies of a curve. Temporary folders a crashed call left behind are removed.
    """
    from torch.utils.tensorboard import SummaryWriter  # torch is slow to import; only needed here

    for stale in tb_dir.parent.glob(f"{TB_TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=TB_TMP_PREFIX, dir=tb_dir.parent))
    writer = SummaryWriter(log_dir=str(staging / TB_DIR))
    try:
        for key in table.columns.drop("epoch"):
            for epoch, value in _finite_points(table["epoch"], table[key]):
                writer.add_scalar(_tb_tag(key), value, global_step=epoch)
    finally:
        writer.close()
    if tb_dir.exists():
        os.replace(tb_dir, staging / "old")
    os.replace(staging / TB_DIR, tb_dir)
    shutil.rmtree(staging)
    return tb_dir


def _finite_points(epochs: Iterable[Any], values: Iterable[Any]) -> list[tuple[int, float]]:
    """(epoch, value) pairs of the finite numeric values; other values are skipped."""
    return [
        (int(epoch), float(value))
        for epoch, value in zip(epochs, values)
        if isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    ]


def _tb_tag(key: str) -> str:
    """TensorBoard tag of a history key: "val_acc_rgb_only" -> "accuracy/val_rgb_only"."""
    if key in TB_TAGS:
        return TB_TAGS[key]
    if key.startswith("val_acc_"):
        return "accuracy/val_" + key.removeprefix("val_acc_")
    return f"other/{key}"


# ---------------------------------------------------------------- files


def _remove_stale(paths: Iterable[Path]) -> None:
    """Delete optional outputs an earlier call wrote and this one has no input for."""
    for path in paths:
        if path.exists():
            path.unlink()
            logger.info("removed %s: an earlier call wrote it, this one has no input for it", path)


def _write_bytes(path: Path, data: bytes) -> Path:
    """Write data to path atomically: a temporary file in the same folder, then os.replace."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as file:  # plain open keeps the umask's permissions
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_json(path: Path, obj: Any) -> Path:
    """Write obj as indented JSON, non-finite floats as null."""
    return _write_bytes(path, _json_bytes(obj))


def _json_bytes(obj: Any) -> bytes:
    """Indented UTF-8 JSON of obj with NaN and infinities as null."""
    return (json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n").encode()


def _jsonable(obj: Any) -> Any:
    """obj with numpy numbers as Python ones, non-finite floats as None, paths as strings."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, Mapping):
        return {str(key): _jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(value) for value in obj]
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{obj!r} of type {type(obj).__name__} cannot be written as JSON")


def _csv_bytes(table: pd.DataFrame) -> bytes:
    """CSV without the index; missing values as empty cells."""
    return table.to_csv(index=False).encode()


def _figure_bytes(fig: Figure) -> bytes:
    """PNG bytes of fig, drawn with the Agg canvas (no pyplot, no global backend)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _write_figure(path: Path, fig: Figure) -> Path:
    """Write fig as a PNG at path atomically."""
    return _write_bytes(path, _figure_bytes(fig))
