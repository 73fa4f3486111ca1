"""The files a finished run leaves for users: history tables, summary, plots, TensorBoard events.

Every file is written atomically (`raymc.storage.write_bytes`), so a crash never leaves a
half-written one. The TensorBoard folder is built beside the old one and swapped in, so re-running
never duplicates curves. This module does not import ray.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from raymc import storage
from raymc.errors import DataError
from raymc.figures import confusion_figure, pathways_figure, save_png, training_curves_figure
from raymc.seed_compat import with_keras_aliases

logger = logging.getLogger(__name__)

__all__ = ["history_frame", "read_history", "write_run_outputs", "write_tensorboard"]

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
        "history_csv": storage.write_bytes(run_dir / "history.csv", _csv_bytes(table)),
        "history_json": storage.write_json(run_dir / "history.json", _history_records(table)),
        "summary_json": storage.write_json(run_dir / "summary.json", summary),
        "training_history_csv": storage.write_bytes(
            run_dir / "training_history.csv", _csv_bytes(with_keras_aliases(table))
        ),
        "training_summary_csv": storage.write_bytes(
            run_dir / "training_summary.csv", _csv_bytes(pd.DataFrame([_flat_scalars(summary)]))
        ),
        "training_curves_png": save_png(
            run_dir / "plots" / "training_curves.png", training_curves_figure(table, summary)
        ),
    }
    optional = {
        "confusion_matrix_png": run_dir / "plots" / "confusion_matrix.png",
        "pathways_json": run_dir / "pathways.json",
        "pathways_png": run_dir / "plots" / "pathways.png",
    }
    if confusion is not None:
        written["confusion_matrix_png"] = save_png(
            optional["confusion_matrix_png"], confusion_figure(confusion, classes, summary)
        )
    if pathways is not None:
        written["pathways_json"] = storage.write_json(optional["pathways_json"], pathways)
        written["pathways_png"] = save_png(
            optional["pathways_png"], pathways_figure(pathways, num_classes=len(classes))
        )
    _remove_stale(path for name, path in optional.items() if name not in written)
    written["tensorboard"] = write_tensorboard(run_dir / TB_DIR, table)
    logger.debug("wrote %d run outputs under %s", len(written), run_dir)
    return written


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """Read a run's history.csv: one row per epoch, columns as written."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: pass the folder of a finished run (the one holding summary.json and history.csv)"
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


def _history_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts; missing values (NaN) become None, i.e. JSON null."""
    return [
        {key: storage.jsonable(value) for key, value in row.items()}
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
            flat[name] = storage.jsonable(value)
    return flat


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
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
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


def _csv_bytes(table: pd.DataFrame) -> bytes:
    """CSV without the index; missing values as empty cells."""
    return table.to_csv(index=False).encode()
