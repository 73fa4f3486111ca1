"""`python -m raymc.results PATH`: a tuning experiment or a training run folder as DataFrames,
a table of the best trials, and plots.

    from raymc.results import load
    r = load("runs/tune-demo_nyu-1a2b3c4d")   # or a run folder such as runs/<name>
    r.trials        # one row per trial: status, epochs_run, best_/final_<metric>, config/..., Tune's last results
    r.epochs        # one row per trial and epoch: every metric the loop reported
    r.best_config   # the best trial's parameters, settings, metric and best_model.pt path

A run folder reads as an experiment of one trial (its history is `.epochs`), so the same table
and plots work for both. This module does not import ray.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from raymc.errors import DataError, cli_main
from raymc.outputs import (
    _write_bytes,
    _write_figure,
    _write_json,
    training_curves_figure,
)

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
EPOCHS_PARQUET = "trials.parquet"
BEST_CONFIG = "best_config.json"
PLOTS = "plots"
LOG_SCALE_SPAN = 20  # a positive hyperparameter spanning this factor or more is drawn on a log axis


@dataclass
class Results:
    """A tuning experiment (kind "experiment") or one training run (kind "run") as tables."""

    path: str
    kind: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    best_config: dict[str, Any]

    @property
    def metric(self) -> str:
        return self.best_config["metric"]

    @property
    def mode(self) -> str:
        return self.best_config["mode"]

    @property
    def params(self) -> list[str]:
        """The searched parameters (config/... columns, without the prefix)."""
        return [c.removeprefix("config/") for c in self.trials.columns if c.startswith("config/")]

    def top(self, n: int = 10) -> pd.DataFrame:
        """The n best trials by their best epoch's metric, with the columns a reader wants first."""
        best = f"best_{self.metric}"
        columns = ["trial_id", "status", "epochs_run", best, "best_epoch", f"final_{self.metric}"]
        columns += [f"config/{p}" for p in self.params]
        table = self.trials[[c for c in columns if c in self.trials]]
        if best in table:
            table = table.sort_values(best, ascending=self.mode == "min", na_position="last")
        return table.head(n).rename(columns=lambda c: c.removeprefix("config/")).reset_index(drop=True)


# ---------------------------------------------------------------- reading


def storage_filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem and path within it of a local path or a URI such as s3://bucket/x."""
    return pyarrow.fs.FileSystem.from_uri(path if "://" in path else str(Path(path).expanduser().resolve()))


def is_file(path: str) -> bool:
    filesystem, root = storage_filesystem(path)
    return _exists(filesystem, root)


def _exists(filesystem: pyarrow.fs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type == pyarrow.fs.FileType.File


def _read_text(filesystem: pyarrow.fs.FileSystem, path: str) -> str:
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


def load(path: str | Path) -> Results:
    """Read an experiment folder (results.parquet) or a run folder (history.csv)."""
    path = str(path).rstrip("/")
    filesystem, root = storage_filesystem(path)
    if _exists(filesystem, f"{root}/{RESULTS_PARQUET}"):
        return Results(
            path=path,
            kind="experiment",
            trials=pq.read_table(f"{root}/{RESULTS_PARQUET}", filesystem=filesystem).to_pandas(),
            epochs=pq.read_table(f"{root}/{EPOCHS_PARQUET}", filesystem=filesystem).to_pandas(),
            best_config=json.loads(_read_text(filesystem, f"{root}/{BEST_CONFIG}")),
        )
    if _exists(filesystem, f"{root}/history.csv") and _exists(filesystem, f"{root}/summary.json"):
        return _load_run(path, filesystem, root)
    hint = " (an interrupted search: finish it with `python -m raymc.tune ... --resume`)" if _exists(filesystem, f"{root}/tuner.pkl") else ""
    raise DataError(
        f"{path}: neither an experiment folder (no {RESULTS_PARQUET}) nor a run folder (no history.csv "
        f"and summary.json){hint}"
    )


def _load_run(path: str, filesystem: pyarrow.fs.FileSystem, root: str) -> Results:
    """A training run as an experiment of one trial, named after its folder."""
    summary = json.loads(_read_text(filesystem, f"{root}/summary.json"))
    history = pd.read_csv(io.StringIO(_read_text(filesystem, f"{root}/history.csv")))
    config = json.loads(_read_text(filesystem, f"{root}/config.json")).get("config", {}) if _exists(filesystem, f"{root}/config.json") else {}
    name, metric = Path(root).name, summary["monitor"]
    history.insert(0, "trial_id", name)
    trial = {
        "trial_id": name,
        "status": "stopped_early" if summary.get("stopped_early") else "completed",
        "epochs_run": summary["epochs_run"],
        f"best_{metric}": summary[f"best_{metric}"],
        "best_epoch": summary["best_epoch"],
        f"final_{metric}": summary["final_metrics"].get(metric),
        "run_dir": path,
        "best_model": f"{path}/best_model.pt",
        **{k: v for k, v in summary.items() if not isinstance(v, (dict, list)) and k not in ("epochs_run", "best_epoch")},
    }
    best = {
        "metric": metric,
        "mode": "min" if metric.endswith("loss") else "max",
        "trial_id": name,
        "value": summary[f"best_{metric}"],
        "epoch": summary["best_epoch"],
        "status": trial["status"],
        "config": {},
        "train_config": config,
        "run_dir": path,
        "best_model": trial["best_model"],
    }
    return Results(path=path, kind="run", trials=pd.DataFrame([trial]), epochs=history, best_config=best)


# ---------------------------------------------------------------- writing


def write_experiment(results: Results) -> dict[str, str]:
    """Write results.csv/.parquet, trials.parquet, best_config.json and plots/ into the experiment
    folder (staged locally, then copied, so an s3:// experiment works the same)."""
    filesystem, root = storage_filesystem(results.path)
    with tempfile.TemporaryDirectory() as folder:
        staging = Path(folder)
        _write_bytes(staging / RESULTS_CSV, results.trials.to_csv(index=False).encode())
        results.trials.to_parquet(staging / RESULTS_PARQUET, index=False)
        results.epochs.to_parquet(staging / EPOCHS_PARQUET, index=False)
        _write_json(staging / BEST_CONFIG, results.best_config)
        plots = draw_plots(results, staging / PLOTS)
        pyarrow.fs.copy_files(str(staging), root, destination_filesystem=filesystem)
    names = [RESULTS_CSV, RESULTS_PARQUET, EPOCHS_PARQUET, BEST_CONFIG, *(f"{PLOTS}/{p.name}" for p in plots)]
    return {name: f"{results.path}/{name}" for name in names}


def draw_plots(results: Results, folder: Path) -> list[Path]:
    """The plots of an experiment (metric per epoch, metric vs each parameter), or a run's
    training curves, written into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if results.kind == "run":
        summary = results.trials.iloc[0].to_dict()
        return [_write_figure(folder / "training_curves.png", training_curves_figure(results.epochs.drop(columns="trial_id"), summary))]
    paths = [_write_figure(folder / f"{results.metric}_by_epoch.png", epochs_figure(results))]
    if results.params and not results.trials.empty:
        paths.append(_write_figure(folder / f"{results.metric}_vs_hyperparameters.png", params_figure(results)))
    return paths


def redraw_plots(results: Results) -> list[str]:
    """Draw the plots again into PATH/plots (e.g. after editing this module's style)."""
    filesystem, root = storage_filesystem(results.path)
    with tempfile.TemporaryDirectory() as folder:
        plots = draw_plots(results, Path(folder))
        pyarrow.fs.copy_files(folder, f"{root}/{PLOTS}", destination_filesystem=filesystem)
    return [f"{results.path}/{PLOTS}/{p.name}" for p in plots]


# ---------------------------------------------------------------- figures

STYLE = {
    "completed": {"linestyle": "-", "alpha": 0.9},
    "pruned": {"linestyle": "--", "color": "0.6", "alpha": 0.8},
}
OTHER_STYLE = {"linestyle": ":", "color": "0.4", "alpha": 0.8}


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
        style = dict(STYLE.get(kind, OTHER_STYLE))
        if trial_id == best_id:
            style.update(linewidth=2.8, alpha=1.0, label=f"best: {trial_id}")
        ax.plot(history["epoch"], history[metric], marker="o", markersize=3, **style)
    counts = pd.Series(status).value_counts()
    ax.plot([], [], **STYLE["completed"], color="C0", label=f"completed ({counts.get('completed', 0)})")
    ax.plot([], [], **STYLE["pruned"], label=f"stopped early by ASHA ({counts.get('pruned', 0)})")
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


# ---------------------------------------------------------------- command line


def format_top(results: Results, n: int = 10) -> str:
    """The top-n table as text."""
    table = results.top(n)
    if table.empty:
        return "(no trials reported a result)"
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _status_line(results: Results) -> str:
    counts = results.trials["status"].value_counts() if "status" in results.trials else pd.Series(dtype=int)
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raymc.results",
        description="Print the best trials of a tuning experiment (or a training run's epochs) and redraw its plots.",
    )
    parser.add_argument("path", help="experiment folder OUT/NAME of raymc.tune, or a run folder of raymc.train")
    parser.add_argument("--top", type=int, default=10, help="how many trials (or epochs) to print (default: %(default)s)")
    parser.add_argument("--no-plots", "--no_plots", dest="plots", action="store_false", help="do not redraw the plots")
    return parser


def _print_run(results: Results, n: int) -> None:
    trial = results.trials.iloc[0]
    best = results.best_config
    print(f"run {trial['trial_id']}: {trial['epochs_run']} epochs ({trial['status']}), best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}")
    columns = [c for c in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_mean_class_acc", "lr") if c in results.epochs]
    print(results.epochs[columns].tail(n).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def _print_experiment(results: Results, n: int) -> None:
    print(f"experiment {results.path}: {len(results.trials)} trials ({_status_line(results)})")
    print(format_top(results, n))
    best = results.best_config
    if best.get("trial_id"):
        print(f"\nbest: {best['trial_id']}  {best['metric']} {best['value']:.4f} at epoch {best['epoch']}")
        print("  " + ", ".join(f"{k}={v}" for k, v in best["config"].items()))
        print(f"  weights: {best['best_model']}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    results = load(args.path)
    (_print_run if results.kind == "run" else _print_experiment)(results, args.top)
    if args.plots:
        for plot in redraw_plots(results):
            print(f"plot: {plot}")
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
